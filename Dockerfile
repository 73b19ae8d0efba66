# One image for both services:
#   docker run IMAGE                                   -> logic worker
#   docker run -e GOCHAT_GATEWAY_ID=gw1 IMAGE gateway  -> WebSocket gateway
# Configure with GOCHAT_* variables (README: Settings); point GOCHAT_BROKER_URL
# at a Kafka cluster (kafka://host:9092). The dev-only Tansu broker is not in here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GOCHAT_DATA_DIR=/var/lib/gochat GOCHAT_WEB_DIR=/app/web \
    GOCHAT_WEB_HOST=0.0.0.0 GOCHAT_GATEWAY_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY gochat_streams ./gochat_streams
COPY web ./web
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/gochat --create-home gochat
USER gochat

EXPOSE 6066 8080
ENTRYPOINT ["gochat-streams"]
CMD ["worker", "-l", "info"]
