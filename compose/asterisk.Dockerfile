# Asterisk 22 from Debian sid, with the project's configuration rendered at start.
FROM debian:sid-slim
RUN apt-get -o Acquire::Check-Valid-Until=false update \
 && apt-get install -y --no-install-recommends asterisk asterisk-modules asterisk-config python3 python3-pydantic-settings \
 && rm -rf /var/lib/apt/lists/*
COPY asterisk_conf/ /opt/pbx/asterisk_conf/
COPY pbx_base/ /opt/pbx/pbx_base/
COPY compose/render_asterisk_conf.py /opt/pbx/
CMD ["sh", "-c", "PYTHONPATH=/opt/pbx python3 /opt/pbx/render_asterisk_conf.py /opt/pbx/asterisk_conf /etc/asterisk && exec asterisk -f -n"]
