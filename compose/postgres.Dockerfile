# PostgreSQL 15 from Debian 12, the version the dev stack and the tests run.
ARG PBX_BOOKWORM_IMAGE=localhost/pbx-bookworm:12
FROM ${PBX_BOOKWORM_IMAGE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY compose/postgres-start.sh /usr/local/bin/postgres-start
USER postgres
ENV PGDATA=/var/lib/postgresql/data
CMD ["postgres-start"]
