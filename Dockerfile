# One image for both services:
#   docker run IMAGE                                   -> logic worker
#   docker run -e GOCHAT_GATEWAY_ID=gw1 IMAGE gateway  -> WebSocket gateway
# Configure with GOCHAT_* variables (README: Settings); point GOCHAT_BROKER_URL
# at a Kafka cluster (kafka://host:9092).
#
# Only the gateway listens beyond the container: its /ws and /history are for clients.
# A worker's web server (views, Faust's /table/, /metrics) shows users' contacts and
# messages, so it listens on the container's loopback. To reach it from outside (Prometheus,
# another worker's forwarded view), set all three:
#   -e GOCHAT_WEB_BIND=0.0.0.0 -e GOCHAT_WEB_HOST=<this worker's address> \
#   -e GOCHAT_OPERATOR_TOKEN=<16+ random characters> -p 6066:6066
# and send "Authorization: Bearer <token>" (README: Operating it). Without the token a
# worker refuses to listen beyond loopback; the same holds for the monitor.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GOCHAT_DATA_DIR=/var/lib/gochat GOCHAT_WEB_DIR=/app/web \
    GOCHAT_GATEWAY_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY gochat_streams ./gochat_streams
COPY web ./web
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/gochat --create-home gochat
USER gochat

EXPOSE 8080
ENTRYPOINT ["gochat-streams"]
CMD ["worker", "-l", "info"]
