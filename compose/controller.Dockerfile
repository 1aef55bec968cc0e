FROM python:3.11-slim
WORKDIR /opt/pbx
COPY pyproject.toml README.md ./
COPY pbx_base/ pbx_base/
COPY pbxctl/ pbxctl/
COPY sorcery_backend/ sorcery_backend/
COPY ari_app/ ari_app/
COPY routing/ routing/
COPY devstack/ devstack/
COPY sql/ sql/
RUN pip install --no-cache-dir .
