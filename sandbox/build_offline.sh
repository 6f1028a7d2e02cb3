#!/bin/sh
# Offline build of the sandbox image (no registry needed, a Debian mirror is):
# the same steps as `rstar sandbox build`, for machines without rstar installed.
#   sudo sandbox/build_offline.sh [IMAGE] [MIRROR]
set -eu
IMAGE="${1:-rstar-sandbox:latest}"
MIRROR="${2:-http://deb.debian.org/debian}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOTFS="${ROOTFS:-${XDG_CACHE_HOME:-$HOME/.cache}/rstar/sandbox-rootfs}"
if [ ! -e "$ROOTFS/.rstar-rootfs-complete" ]; then
    rm -rf "$ROOTFS.partial"
    mkdir -p "$(dirname "$ROOTFS")"
    echo "debootstrap bookworm into $ROOTFS (a few minutes)" >&2
    debootstrap --variant=minbase --include=python3-minimal,python3-sympy,python3-numpy \
        bookworm "$ROOTFS.partial" "$MIRROR"
    for d in usr/share/doc usr/share/man usr/share/info usr/share/locale usr/share/lintian \
             var/cache/apt var/lib/apt/lists var/log; do
        rm -rf "$ROOTFS.partial/$d"; mkdir -p "$ROOTFS.partial/$d"
    done
    rm -rf "$ROOTFS"; mv "$ROOTFS.partial" "$ROOTFS"
    echo bookworm > "$ROOTFS/.rstar-rootfs-complete"
fi
install -d -m 0755 "$ROOTFS/opt/rstar"
install -m 0644 "$HERE/worker.py" "$ROOTFS/opt/rstar/worker.py"
echo "importing $ROOTFS as $IMAGE" >&2
# no rstar.worker.sha256 label here: `rstar sandbox build` will consider this image stale and redo it
tar -C "$ROOTFS" --exclude=./.rstar-rootfs-complete -c . | docker import \
    --change 'USER 65534:65534' --change 'WORKDIR /tmp' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 HOME=/tmp PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'CMD ["python3", "-I", "/opt/rstar/worker.py"]' - "$IMAGE"
echo "built $IMAGE" >&2
