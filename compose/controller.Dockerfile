# Two images (build targets): the control plane (pbxctl: migrate, serve) on Debian 12's Python, in a
# venv of its own; and the cluster's SIP edge, Debian 12's Kamailio 5.6 with that venv beside it,
# because the control plane's code renders the edge's configuration (python -m devstack.edge_container).
ARG PBX_BOOKWORM_IMAGE=localhost/pbx-bookworm:12
FROM ${PBX_BOOKWORM_IMAGE} AS controller
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# pip trusts the system store, which carries any CA of the site the base image was built on.
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt
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
RUN pip install --no-cache-dir -q . && rm -rf /opt/pbx
WORKDIR /

# Kamailio installed before the control plane's venv is copied in: a change to the project's code
# rebuilds the copy (seconds), not the packages.
FROM ${PBX_BOOKWORM_IMAGE} AS edge
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 kamailio kamailio-postgres-modules >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=controller /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
