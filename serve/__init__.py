"""The kiosk service: `instantid-edge serve`, an HTTP API over the runtime's pipeline and a webcam page.

One app definition (app.create_app) runs on an Engine (engine.Engine): the local engine here runs jobs in one
worker thread of this process; another engine can run them elsewhere behind the same routes. Needs the `serve`
extra (FastAPI, uvicorn, python-multipart); never torch. The runtime does not import this package.
"""
