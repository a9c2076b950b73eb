# The API, worker and migrate image. Same code and settings as the native stack.
FROM python:3.11-slim-bookworm

# A CJK font so Chinese product names render in the videos; ffmpeg comes from the
# imageio-ffmpeg wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-wqy-zenhei \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The pinned, hashed runtime lock (`make lock`), then the project without resolving again.
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY service ./service
# ops/ (provisioning) and pgbouncer/ (the renderer ops imports) for the migrate job.
COPY ops ./ops
COPY pgbouncer ./pgbouncer
RUN pip install --no-cache-dir --no-deps . && pip check

RUN useradd --system --uid 10001 --home /app app \
 && mkdir -p /data/media /data/work && chown -R app /data
USER app
ENV MEDIA_DIR=/data/media WORK_DIR=/data/work PYTHONUNBUFFERED=1
EXPOSE 8000 9100 9101
CMD ["python", "-m", "service", "api"]
