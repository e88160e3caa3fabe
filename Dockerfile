# gatewayd in a container: `docker build -t gatewayd .`, then
#   docker run -p 2525:2525 -p 1143:1143 -p 8025:8025 -v gatewayd:/var/lib/gatewayd \
#     -e GATEWAYD_SMTP__UPSTREAM__HOST=mail.example.org -e GATEWAYD_SMTP__UPSTREAM__PORT=25 gatewayd
# Mount your own config over /etc/gatewayd/gatewayd.toml, or override keys with GATEWAYD_* variables
# (the environment wins over the file).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --user-group --home-dir /var/lib/gatewayd --shell /usr/sbin/nologin gatewayd \
 && install -d -o gatewayd -g gatewayd -m 0750 /var/lib/gatewayd \
 && install -d -m 0755 /etc/gatewayd

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gatewayd ./gatewayd
RUN pip install . && rm -rf /src

COPY config/gatewayd.toml /etc/gatewayd/gatewayd.toml
COPY models /usr/share/gatewayd/models

# The example config listens on loopback and keeps state under ./var: inside a container, listen
# on all interfaces and keep state in the volume.
ENV GATEWAYD_SMTP__LISTEN='["0.0.0.0:2525"]' \
    GATEWAYD_IMAP__LISTEN='["0.0.0.0:1143"]' \
    GATEWAYD_HTTP__LISTEN=0.0.0.0:8025 \
    GATEWAYD_SPOOL__PATH=/var/lib/gatewayd/spool \
    GATEWAYD_STORAGE__URL=sqlite+aiosqlite:////var/lib/gatewayd/gatewayd.db \
    GATEWAYD_ANALYSIS__MODELS_DIR=/usr/share/gatewayd/models

USER gatewayd
WORKDIR /var/lib/gatewayd
VOLUME /var/lib/gatewayd
EXPOSE 2525 1143 8025
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4)"
CMD ["gatewayd", "run", "-c", "/etc/gatewayd/gatewayd.toml"]
