# Asterisk 22 from Debian sid, with the project's configuration rendered at start.
FROM debian:sid-slim
RUN apt-get -o Acquire::Check-Valid-Until=false update \
 && apt-get install -y --no-install-recommends asterisk asterisk-modules asterisk-config python3 \
 && rm -rf /var/lib/apt/lists/*
COPY asterisk_conf/ /opt/pbx/asterisk_conf/
COPY compose/render_asterisk_conf.py /opt/pbx/
CMD ["sh", "-c", "python3 /opt/pbx/render_asterisk_conf.py /opt/pbx/asterisk_conf /etc/asterisk && exec asterisk -f -n"]
