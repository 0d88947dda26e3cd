"""The local OpenAI-compatible API server (FastAPI + uvicorn), served by the app's own Runtime.

    api.py    the endpoints (create_app)
    jobs.py   the worker thread that runs requests in order on the shared Runtime
    cache.py  the prompt-prefix cache of RWKV states
    run.py    start/stop (ApiServer), `roost serve`
"""
