"""Local fakes of the external services the service talks to (real HTTP on 127.0.0.1).

- tests.fakes.ark: Volcengine Ark's content-generation (video) task API.
- tests.fakes.s3: an S3 server (moto in server mode).
- tests.fakes.wechat: WeChat's server APIs (login, access token, content check, subscribe
  messages).
"""
