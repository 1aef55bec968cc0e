FROM python:3.11-slim
WORKDIR /opt/pbx
# What `pip install .` needs: the packages, and the folders pyproject.toml maps into pbx_base as
# package data (tests/test_packaging.py builds its wheel from exactly these COPY lines).
COPY pyproject.toml README.md ./
COPY pbx_base/ pbx_base/
COPY pbxctl/ pbxctl/
COPY sorcery_backend/ sorcery_backend/
COPY ari_app/ ari_app/
COPY routing/ routing/
COPY routing_store/ routing_store/
COPY http_api/ http_api/
COPY devstack/ devstack/
COPY sql/ sql/
COPY asterisk_conf/ asterisk_conf/
COPY kamailio_conf/ kamailio_conf/
COPY examples/ examples/
RUN pip install --no-cache-dir .
