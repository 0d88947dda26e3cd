"""User-facing text in English and Simplified Chinese. `tr(key)` in the language chosen at start."""

from __future__ import annotations

LANGUAGES = {"en": "English", "zh": "简体中文"}
_lang = "en"

TEXT = {
    # navigation and status
    "Chat": "对话", "Completion": "续写", "Models": "模型", "Settings": "设置",
    "No model loaded": "未加载模型",
    "Loading {name} … {pct}%": "正在加载 {name} … {pct}%",
    "Ready: {name} ({strategy})": "就绪：{name}（{strategy}）",
    "Generating… {tps:.1f} tokens/s": "生成中… {tps:.1f} 词元/秒",
    "Reading the message… {pct}%": "正在读取消息… {pct}%",
    "Error: {msg}": "错误：{msg}",
    "RAM {used} used of {total}": "内存 已用 {used} / 共 {total}",
    "VRAM {used} used of {total}": "显存 已用 {used} / 共 {total}",
    # chat
    "New chat": "新对话", "Rename": "重命名", "Delete": "删除", "Search chats…": "搜索对话…", "Chats": "对话列表",
    "Send": "发送", "Stop": "停止", "Regenerate": "重新生成", "Export…": "导出…",
    "Type a message (Ctrl+Enter to send)": "输入消息（Ctrl+Enter 发送）",
    "Think before answering": "先思考再回答",
    "Sampling": "采样参数", "Persona": "角色",
    "You": "你", "Thinking": "思考过程", "Thinking ({n} characters)": "思考过程（{n} 字）", "show": "展开", "hide": "收起", "copy": "复制", "edit": "编辑",
    "{n} tokens in context": "上下文 {n} 个词元",
    "Changes not saved yet.": "有尚未保存的更改。", "Discard changes": "放弃更改",
    "Save the changes to Settings?": "保存对设置的更改吗？",
    "Expected speed on this computer: {speed}.": "在这台电脑上的预计速度：{speed}。",
    "Reading your message… {pct}% ({done:,} of {total:,} tokens)": "正在读取你的消息… {pct}%（{done:,} / {total:,} 个词元）",
    "Interrupted: Roost closed before this reply was finished.": "已中断：这条回复写完之前 Roost 被关闭了。",
    "Editing a question: sending makes a new version of it. Esc cancels.": "正在编辑问题：发送后成为它的新版本。按 Esc 取消。",
    "Load a model to start chatting.": "请先加载模型再开始对话。",
    "Rename chat": "重命名对话", "Title:": "标题：",
    "Delete this chat?": "删除这个对话？",
    "Markdown (*.md)": "Markdown 文件 (*.md)",
    "Roost chat (*.json)": "Roost 对话文件 (*.json)", "Import…": "导入…",
    "regenerate": "重新生成", "Don't think": "不思考", "Think a bit": "稍加思考", "Think": "思考",
    "Think a lot": "深入思考", "Thinking first gives better answers to hard questions, and takes longer.":
        "先思考能更好地回答难题，但会更慢。", "Also allow web pages from:": "另外允许这些网页：",
    "e.g. https://chat.example.org (comma-separated)": "例如 https://chat.example.org（用逗号分隔）",
    "Pages of this computer, desktop apps (Obsidian, VS Code, Tauri) and browser extensions may always call the API; other websites only when listed here.":
        "本机的网页、桌面应用（Obsidian、VS Code、Tauri）和浏览器扩展总是可以调用接口；其他网站只有列在这里才可以。", "Good for": "适合", "On this computer": "在本机", "Your own file": "你自己的文件",
    "Last time Roost ended while loading {name} with the strategy “{strategy}” (it crashed or was closed by force; the details are in the log). It was not loaded again. Try another strategy, or choose one on the Models page.":
        "上次 Roost 在以“{strategy}”方式加载 {name} 时意外结束（程序崩溃或被强制关闭，详情见日志）。这次没有再自动加载它。请换一种运行方式，或在“模型”页选择。",
    "Load with {strategy}": "以 {strategy} 加载", "Load again": "重新加载",
    "Technical details": "技术细节", "Runs as “{strategy}”.": "运行方式：“{strategy}”。",
    "cuda: runs on the NVIDIA graphics card (fastest when the model fits in its memory).":
        "cuda：在 NVIDIA 显卡上运行（模型能放进显存时最快）。",
    "mps: runs on the Apple Silicon graphics unit.": "mps：在 Apple 芯片的图形单元上运行。",
    "cpu: runs on the processor and ordinary memory (works everywhere, slower).": "cpu：在处理器和普通内存上运行（到处可用，较慢）。",
    "int8 / i8: weights kept in 8 bits: half the memory of 16 bits and faster to read, a little less exact.":
        "int8 / i8：权重以 8 位保存：内存是 16 位的一半，读取更快，精度略低。",
    "Converted weights": "转换后的权重",
    "Models run with 8-bit or 4-bit weights are converted when they load. Roost keeps the converted weights in its cache folder, so the next load is faster.":
        "以 8 位或 4 位权重运行的模型在加载时需要转换。Roost 把转换后的权重保存在缓存文件夹中，下次加载更快。",
    "0 keeps none; the least recently used models go first.": "0 表示不保存；最久未使用的模型先被删除。",
    "Disk space for converted weights:": "转换后权重的磁盘空间：",
    "Delete converted weights": "删除转换后的权重",
    "int4 / i4: weights kept in 4 bits: half the memory of int8, noticeably less exact; faster than int8 on processors with AVX-512, as fast on others.":
        "int4 / i4：权重以 4 位保存：内存是 int8 的一半，精度明显降低；在支持 AVX-512 的处理器上比 int8 快，其他处理器上速度相同。",
    "fp16: weights in 16-bit floating point: half the memory of fp32, as exact as needed.":
        "fp16：16 位浮点权重：内存是 fp32 的一半，精度足够。",
    "bf16: another 16-bit format, with fp32's range: for processors that support it.":
        "bf16：另一种 16 位格式，数值范围与 fp32 相同：用于支持它的处理器。",
    "fp32: full 32-bit precision: the most exact and the most memory.": "fp32：完整的 32 位精度：最精确，内存占用最多。",
    "*N -> ...: the first N layers run on the first device, the rest on the next one.":
        "*N -> ...：前 N 层在第一个设备上运行，其余在下一个设备上。", "Advanced": "高级", "Advanced settings": "高级设置", "Your text": "你的文字",
    "Writing stops when one of these appears (separate them with commas; \\n is a new line).":
        "出现其中任意一个时停止（用逗号分隔；\\n 表示换行）。",
    "Load a model first (Models page).": "请先加载模型（在“模型”页）。",
    "Write a beginning or choose a preset first.": "请先写个开头，或选择一个预设。",
    "Higher: more varied and surprising text. Lower: more predictable.": "越高文字越多变、越出人意料；越低越稳定。",
    "Picks only among the likeliest words that together make up this share. Lower is safer.":
        "只在累计概率达到此比例的最可能的词中挑选；越低越保守。",
    "Picks only among this many likeliest words. 0: no limit.": "只在最可能的这么多个词中挑选；0 表示不限。",
    "Makes any word already used less likely: more new topics.": "已用过的词变得不太可能再出现：话题更多样。",
    "Makes a word less likely the more often it was used: less repetition.": "一个词用得越多，越不容易再出现：减少重复。",
    "How slowly those penalties fade for words used long ago (1: never).": "较早用过的词，上述惩罚消退得多慢（1 表示不消退）。",
    "The longest the text can get, in tokens (a token is about a Chinese character or three quarters of an English word).":
        "文字的最大长度，以词元计（一个词元约为一个汉字或四分之三个英文单词）。", "Message": "消息", "Pages": "页面",
    "Type a message (Enter to send, Shift+Enter for a new line)": "输入消息（Enter 发送，Shift+Enter 换行）",
    "Enter (Shift+Enter for a new line)": "Enter（Shift+Enter 换行）",
    "Ctrl+Enter (Enter for a new line)": "Ctrl+Enter（Enter 换行）", "Send a message with:": "发送消息：", "code": "代码", "Conversation": "对话内容",
    "Show {n} earlier messages": "显示之前的 {n} 条消息", "delete": "删除", "Undo": "撤销", "Deleted “{title}”.": "已删除“{title}”。",
    "Copy": "复制", "Copied": "已复制", "No chat contains “{query}”.": "没有包含“{query}”的对话。", "Edit": "编辑", "Pin": "置顶", "Unpin": "取消置顶", "Pinned": "已置顶", "Today": "今天", "Yesterday": "昨天",
    "Previous 7 days": "过去 7 天", "Previous 30 days": "过去 30 天", "Earlier": "更早",
    "Could not write {path}: {why}": "无法写入 {path}：{why}", "Could not read {path}: {why}": "无法读取 {path}：{why}",
    # personas
    "Assistant": "助手", "Concise": "简洁", "Translator": "翻译", "Writer": "写作",
    # completion
    "Generate": "生成", "Stop strings:": "停止词：", "Max tokens:": "最多词元：", "Preset:": "预设：",
    "Start writing, then press Generate.": "写下开头，然后点“生成”。",
    "{n} tokens · {tps:.1f} tokens/s · {why}": "{n} 个词元 · {tps:.1f} 词元/秒 · {why}",
    "finished": "已完成", "reached the token limit": "已达到长度上限", "stopped": "已停止",
    # models
    "Search models…": "搜索模型…", "All releases": "全部版本", "All families": "全部系列",
    "Model": "模型", "Family": "系列", "Speed": "速度", "fast": "快", "usable": "可用", "slow": "慢", "Size": "大小", "Fits this computer": "本机是否可用",
    "Strategy": "运行方式", "Status": "状态",
    "Download": "下载", "Pause": "暂停", "Resume": "继续", "Cancel": "取消", "Load": "加载",
    "Unload": "卸载", "Import file…": "导入文件…", "Refresh list": "刷新列表",
    "downloaded": "已下载", "damaged": "已损坏", "not downloaded": "未下载", "queued": "排队中", "paused": "已暂停",
    "failed": "失败", "removed upstream": "已从上游删除", "loaded": "已加载",
    "{pct}% · {speed}/s · {eta} left": "{pct}% · {speed}/s · 剩余 {eta}",
    "Automatic": "自动", "Custom…": "自定义…",
    "Strategy for this model:": "此模型的运行方式：",
    "Delete {name} from the models folder?": "从模型文件夹删除 {name}？",
    "Choose an RWKV model file": "选择 RWKV 模型文件",
    "RWKV models (*.pth *.safetensors)": "RWKV 模型 (*.pth *.safetensors)",
    "Local file": "本地文件", "Recommended for this computer": "推荐给这台电脑",
    # first run
    "Proxy and download source…": "代理与下载源…", "I already have a model file…": "我已有模型文件…",
    "Try again": "重试",
    "The server could not start; the details are in the log.": "服务器未能启动，详情见日志。",
    "The model list could not be refreshed; the details are in the log.": "无法刷新模型列表，详情见日志。",
    "{name} could not be deleted: it may be in use by another program, or the folder is read-only. Close that "
    "program and try again.": "无法删除 {name}：它可能正被其他程序使用，或文件夹是只读的。请关闭该程序后重试。",
    "Welcome to Roost": "欢迎使用 Roost", "{n} CPU cores": "{n} 核 CPU", "{size} RAM": "内存 {size}",
    "Recommended for this computer:": "推荐给这台电脑：",
    "Download and start chatting": "下载并开始对话",
    "Checking this computer…": "正在检测这台电脑…",
    "Downloading {name}: {pct}%": "正在下载 {name}：{pct}%",
    # settings
    "Models folder:": "模型文件夹：", "Browse…": "浏览…", "Download source:": "下载源：",
    "Hugging Face token:": "Hugging Face 令牌：", "Proxy:": "代理：", "Language:": "语言：",
    "Theme:": "主题：", "Light": "浅色", "Dark": "深色", "System": "跟随系统",
    "Default strategy:": "默认运行方式：", "CPU threads:": "CPU 线程数：",
    "Automatic: the physical cores other programs leave free, looked at again every second. On a busy computer "
    "fewer threads run faster.": "自动：其他程序空出的物理核心数，每秒重新查看一次。电脑繁忙时，线程少反而更快。", "Default sampling": "默认采样参数",
    "Temperature:": "温度：", "Top P:": "Top P：", "Top K:": "Top K：",
    "Presence penalty:": "存在惩罚：", "Frequency penalty:": "频率惩罚：", "Penalty decay:": "惩罚衰减：",
    "Save": "保存", "Saved.": "已保存。",
    "The language changes when Roost starts again: Restart now, or later.": "语言将在 Roost 重新启动后生效：可以现在重启，也可以稍后。",
    "Restart now": "现在重启", "Roost could not start again; close it and start it yourself.": "Roost 无法自动重启，请关闭后手动启动。",
    "Open log": "打开日志", "Copy diagnostics": "复制诊断信息",
    "Diagnostics copied to the clipboard.": "诊断信息已复制到剪贴板。",
    "optional, e.g. http://127.0.0.1:7890": "可选，例如 http://127.0.0.1:7890",
    "optional, for gated or private models": "可选，用于受限或私有模型",
    # local API server
    "Local API server": "本地 API 服务器",
    "Saved chat states": "已保存的对话状态",
    "A system prompt, or a state-tuned persona (★): a starting state trained for a style or a role, for the "
    "loaded model.": "系统提示词，或状态微调角色（★）：为某种风格或角色训练的初始状态，适用于当前加载的模型。",
    "★ {name} (not available)": "★ {name}（不可用）",
    "No model is loaded yet. Choose one on the Models page (Ctrl+3), or drop a model file on this window.":
        "尚未加载模型。请在“模型”页面（Ctrl+3）选择一个，或把模型文件拖到此窗口。",
    "Chat with {model}. It runs on this computer: nothing you write leaves it.":
        "与 {model} 对话。它在这台电脑上运行：你写的内容不会离开这台电脑。",
    "It can think before it answers: choose how much above.": "它可以先思考再回答：在上方选择思考的多少。",
    "Ctrl+N starts a new chat; Persona (above) gives the model a role.": "Ctrl+N 新建对话；上方的“角色”可为模型设定身份。",
    "Persona {name} added: choose it in the chat's Persona menu (with a model it fits).":
        "已添加角色 {name}：请在对话的“角色”菜单中选择（需加载与之匹配的模型）。",
    "After each reply Roost keeps the model's state on disk, so a long chat continues at once after a restart "
    "instead of reading its whole history again.":
        "每次回复后，Roost 会把模型状态保存到磁盘，重启后长对话可以立即继续，无需重新读取全部历史。",
    "0 keeps none; the least recently used states go first.": "0 表示不保存；空间不足时先删除最久未用的状态。",
    "Disk space for saved states:": "已保存状态的磁盘空间：",
    "Clear saved states": "清除已保存的状态",
    "Not available (the chats are not saved to disk).": "不可用（对话未保存到磁盘）。",
    "In use: {size} MB in {n} files": "已用：{size} MB，共 {n} 个文件",
    "Local API server (OpenAI-compatible)": "本地 API 服务器（兼容 OpenAI）",
    "Host:": "监听地址：", "Port:": "端口：", "API key:": "API 密钥：",
    "required when the host is not 127.0.0.1": "监听地址不是 127.0.0.1 时必填",
    "Starting…": "正在启动…", "Stopping…": "正在停止…", "Stopped.": "已停止。",
    "Running at {url}": "运行中：{url}",
    "No model is loaded yet: requests get an error until one is.": "尚未加载模型：加载模型之前，请求会返回错误。",
    "Other computers can reach it; keep the API key secret.": "其他电脑可以访问它，请妥善保管 API 密钥。",
    "The engine is still starting. Try again in a moment.": "引擎仍在启动，请稍后再试。",
}


def set_language(lang: str) -> None:
    global _lang
    _lang = lang if lang in LANGUAGES else "en"


def language() -> str:
    return _lang


def tr(key: str, **kw) -> str:
    text = TEXT.get(key, key) if _lang == "zh" else key
    return text.format(**kw) if kw else text


def pick(en: str, zh: str) -> str:
    """Choose between an English and a Chinese text that come together (catalog, advisor)."""
    return zh if _lang == "zh" and zh else en


def split_bilingual(message: str) -> str:
    """Error messages from the core carry English, a newline, then Chinese: show one of them."""
    parts = message.split("\n")
    if len(parts) >= 2 and any("\u4e00" <= ch <= "\u9fff" for ch in parts[-1]):
        return parts[-1] if _lang == "zh" else "\n".join(parts[:-1])
    return message
