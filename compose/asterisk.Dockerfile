# Asterisk 22 from Debian sid: the dev stack's chroot imported as an image (devstack/images.py), so a
# container runs the very build the tests run. The project's configuration is rendered at start.
ARG PBX_ASTERISK_IMAGE
FROM ${PBX_ASTERISK_IMAGE}
RUN apt-get -o Acquire::Check-Valid-Until=false update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-pydantic-settings >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY asterisk_conf/ /opt/pbx/asterisk_conf/
COPY pbx_base/ /opt/pbx/pbx_base/
COPY compose/render_asterisk_conf.py /opt/pbx/
CMD ["sh", "-c", "PYTHONPATH=/opt/pbx python3 /opt/pbx/render_asterisk_conf.py /opt/pbx/asterisk_conf /etc/asterisk && exec asterisk -f -n"]
