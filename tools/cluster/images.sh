#!/usr/bin/env bash
# images.sh base|project - build the test cluster's images and import them into its containerd.
#
#   base     pause (the sandbox), CoreDNS, KubeRay's operator and Kueue's: each a static binary on an empty
#            root, from build.sh's folder (Kueue's from kueue.sh's, $KUEUE_DIR)
#   debian-root  only the Debian root layer of `project`, into the cache
#   project  the trainer and the operator images under the names the chart and the operator use by
#            default (ghcr.io/disney-train/{trainer,operator}:<version>). No registry and no Docker engine
#            here, so not from images/*.Dockerfile (the recipes for real clusters): a Debian root from
#            debootstrap with the libraries Python needs and the users those Dockerfiles make (ray 1000,
#            operator 65532), this machine's Python at its own path (the .venv's interpreter names it),
#            the project's .venv at /opt/disney-train/venv and its source at /opt/disney-train/src (with a
#            small layer of the .venv's scripts and editable-install finder rewritten for those places),
#            whatever this checkout's path. Layers are cached under $CLUSTER_CACHE by what they hold; the
#            source layer is made each time.
#   import SPEC.json  the images of one mkimage.py spec
# Each import drops the images it replaced (prune), so a node's store holds one .venv layer, not one per
# checkout that ever ran make cluster.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
: "${CLUSTER_BIN:?CLUSTER_BIN is not set}" "${CLUSTER_CACHE:?CLUSTER_CACHE is not set}"
PY=${PY:-$REPO/.venv/bin/python}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
IMAGES=$CLUSTER_CACHE/images
mkdir -p "$IMAGES"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# ctr in this node's containerd, in the CRI's namespace
node_ctr() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# snapshots: the committed snapshots this containerd holds (KEY [PARENT] KIND: a bottom layer has no parent)
snapshots() { node_ctr snapshots ls | awk 'NR > 1 && $NF == "Committed" {print $1}'; }

# pin / unpin: the committed snapshots as garbage-collection roots (containerd.io/gc.root), and no longer.
# mkimage.py leaves out the layers whose snapshots the store holds, and the import renames the images before
# it unpacks: the image that held a snapshot may then have no name left (the CRI names an image by its ID
# only the first time it sees its name), and containerd's collector took the snapshot from under the import
# ("parent snapshot ... does not exist"). So only what is pinned is left out; pin prints what it pinned. A
# pin left by an import that was killed goes with the next import's unpin.
PIN=containerd.io/gc.root
pin() {
  local s
  for s in $(snapshots); do
    node_ctr snapshots label "$s" "$PIN=$(date -u +%FT%TZ)" >/dev/null 2>&1 && echo "$s"
  done
  return 0
}
unpin() {
  local s
  for s in $(snapshots); do node_ctr snapshots label "$s" "$PIN=" >/dev/null; done
}

# import SPEC.json: the images into this node's containerd; then, as containerd's discard_unpacked_layers
# does for pulls, the layer blobs are dropped: the unpacked snapshots are what runs, so each node keeps one
# copy of the project's gigabytes, not two
import() {
  local spec=$1
  python3 - "$spec" "$(pin)" >"$spec.with" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["snapshots"] = sys.argv[2].split()
print(json.dumps(spec))
EOF
  if ! python3 "$HERE/mkimage.py" "$spec.with" | node_ctr images import - >/dev/null; then
    unpin
    die "importing $(python3 -c 'import json,sys; print(" ".join(i["ref"] for i in json.load(open(sys.argv[1]))["images"]))' "$spec") failed"
  fi
  unpin
  local l
  for l in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["layers"]))' "$spec"); do
    [ -f "$l.sha256" ] && node_ctr content rm "sha256:$(cat "$l.sha256")" >/dev/null 2>&1
  done
  prune
}

# prune: the images no name points to any more, with the snapshots only they held. containerd's CRI
# names every image it sees a second time by its ID (`sha256:<config>`) and keeps that name when the
# image's own name moves to a new import: each checkout's re-imported .venv layer (6.4 GB, different
# per checkout path) then stayed on disk for good. Such an ID name whose image no other name points to is
# deleted; --sync runs containerd's garbage collection now, not after its next 100 changes.
prune() {
  local stale
  stale=$(node_ctr images ls | awk '
    NR > 1 { if ($1 ~ /^sha256:/) id[$1] = $3; else named[$3] = 1 }
    END { for (r in id) if (!(id[r] in named)) print r }')
  [ -z "$stale" ] && return 0
  log "dropping images no name points to any more (an earlier import's): $(echo "$stale" | wc -l)"
  # shellcheck disable=SC2086
  node_ctr images rm --sync $stale >/dev/null
}

# static IMAGE BINARY PATH_IN_IMAGE USER [ARGS...]: one binary on an empty root
static() {
  local ref=$1 bin=$2 path=$3 user=$4; shift 4
  local root=$scratch/root-$(basename "$path")
  mkdir -p "$root$(dirname "$path")" && cp "$bin" "$root$path"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$root.tar" .
  python3 - "$ref" "$root.tar" "$path" "$user" "$@" >"$scratch/spec.json" <<'EOF'
import json, sys
ref, layer, path, user, *args = sys.argv[1:]
print(json.dumps({"layers": [layer], "images": [{"ref": ref, "entrypoint": [path], "cmd": args or None, "user": user}]}))
EOF
  import "$scratch/spec.json"
}

base() {
  static "registry.k8s.io/pause:$PAUSE_VERSION" "$CLUSTER_BIN/pause" /pause 65535:65535
  static "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$CLUSTER_BIN/coredns" /coredns 65532:65532
  static "quay.io/kuberay/operator:$KUBERAY_VERSION" "$CLUSTER_BIN/ray-operator" /manager 65532:65532
  : "${KUEUE_DIR:?KUEUE_DIR is not set (make cluster sets it)}"
  [ -x "$KUEUE_DIR/kueue" ] || die "no $KUEUE_DIR/kueue: run tools/cluster/kueue.sh first (make cluster does)"
  static "registry.k8s.io/kueue/kueue:$(kueue_version)" "$KUEUE_DIR/kueue" /manager 65532:65532
}

# the Debian root: minbase plus what this machine's Python and the wheels in .venv load, bash (KubeRay
# starts Ray with `bash -lc`), ps/kill (Ray), and the image users
debian_root() {
  local out=$IMAGES/debian-bookworm-1.tar
  [ -f "$out" ] && { echo "$out"; return; }
  command -v debootstrap >/dev/null || die "debootstrap is missing: tools/cluster/system-deps.sh installs it"
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  local root=$scratch/debian
  log "debootstrap bookworm from $mirror (once per machine)"
  debootstrap --variant=minbase \
    --include=ca-certificates,procps,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libncursesw6,libreadline8,libuuid1,libgdbm6,zlib1g,libgomp1,libstdc++6 \
    bookworm "$root" "$mirror" >"$scratch/debootstrap.log" 2>&1 || { tail -20 "$scratch/debootstrap.log" >&2; die "debootstrap failed"; }
  chroot "$root" groupadd --gid 1000 ray
  chroot "$root" useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
  chroot "$root" groupadd --gid 65532 nonroot
  chroot "$root" useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nonroot
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  echo "$out"
}

# parents PATH...: the folders above each path (relative to /), so a layer carries them traversable by
# all (the Debian root's /root is 0700; the image users are not root)
parents() {
  local p d
  for p in "$@"; do
    d=$(dirname "${p#/}")
    while [ "$d" != . ]; do echo "$d"; d=$(dirname "$d"); done
  done | sort -u
}

# The Python and .venv layers keep their bytecode (__pycache__): the images' users cannot write there, so
# without it every Python process in a pod (KubeRay's wait-gcs-ready `ray health-check` under its 200m CPU
# cap, `ray start`, each Ray worker) compiled ray, torch and diffusers from source again (kuberay#5138).

# tree_layer NAME KEY PATH...: the paths (absolute) at the same places in the image, readable by all
tree_layer() {
  local name=$1 key=$2; shift 2
  local out=$IMAGES/$name-$key.tar
  if [ ! -f "$out" ]; then
    rm -f "$IMAGES/$name"-*
    log "layer $name: $* (once per content)"
    tar --numeric-owner --owner=0 --group=0 --mode=a+rX -C / -cf "$out.tmp" \
      --no-recursion $(parents "$@") --recursion "${@#/}" && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# The project's .venv and source go to fixed places in the images, whatever this checkout's path: a
# checkout under /tmp would otherwise be hidden by the operator pod's own /tmp (an emptyDir).
VENV_IN_IMAGE=/opt/disney-train/venv
SRC_IN_IMAGE=/opt/disney-train/src

# moved_layer NAME KEY FROM TO: the tree at FROM (absolute), at TO in the image, readable by all
moved_layer() {
  local name=$1 key=$2 from=${3#/} to=${4#/}
  local out=$IMAGES/$name-$key.tar
  if [ ! -f "$out" ]; then
    rm -f "$IMAGES/$name"-*
    log "layer $name: /$from as /$to (once per content)"
    tar --numeric-owner --owner=0 --group=0 --mode=a+rX -C / -cf "$out.tmp" \
      --transform "s|^$(printf '%s' "$from" | sed 's/[.[\*^$]/\\&/g')|$to|" "$from" && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# relocated VENV: a small layer over the moved .venv: its scripts (their #! lines) and the editable
# install's finder, with this checkout's paths turned into the images' own
relocated() {
  local venv=$1 dir=$scratch/relocated f rel
  mkdir -p "$dir"
  for f in $(grep -lI -e "$venv" -e "$REPO" "$venv"/bin/* "$venv"/lib/python3*/site-packages/*.py \
             "$venv"/lib/python3*/site-packages/*.pth 2>/dev/null); do
    [ -L "$f" ] && continue
    rel=${f#"$venv"/}
    mkdir -p "$dir/${VENV_IN_IMAGE#/}/$(dirname "$rel")"
    sed -e "s|$venv|$VENV_IN_IMAGE|g" -e "s|$REPO|$SRC_IN_IMAGE|g" "$f" >"$dir/${VENV_IN_IMAGE#/}/$rel"
    chmod a+rx "$dir/${VENV_IN_IMAGE#/}/$rel"
  done
  tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$scratch/relocated.tar" opt
  echo "$scratch/relocated.tar"
}

project() {
  [ -x "$PY" ] || die "no $PY: make setup first"
  local prefix venv base py venvl fix app
  prefix=$("$PY" -c 'import sys; print(sys.base_prefix)')
  venv=$("$PY" -c 'import sys; print(sys.prefix)')
  base=$(debian_root)
  py=$(tree_layer python "$(echo "$prefix with bytecode" | sha256sum | cut -c1-12)" "$prefix")
  venvl=$(moved_layer venv "$(cat "$REPO/pyproject.toml" "$REPO/constraints.txt" <(echo "$venv moved, with bytecode") | sha256sum | cut -c1-12)" "$venv" "$VENV_IN_IMAGE")
  fix=$(relocated "$venv")
  app=$scratch/app.tar
  local src=(disney_train operator/disney_operator pyproject.toml)
  tar --numeric-owner --owner=0 --group=0 --mode=a+rX --exclude=__pycache__ -C "$REPO" -cf "$app" \
    --transform "s|^|${SRC_IN_IMAGE#/}/|" "${src[@]}"
  python3 - "$base" "$py" "$venvl" "$fix" "$app" "$VENV_IN_IMAGE" "$VERSION" >"$scratch/spec.json" <<'EOF'
import json, sys
base, py, venv_layer, fix, app, venv, version = sys.argv[1:]
path = f"PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
print(json.dumps({"layers": [base, py, venv_layer, fix, app], "images": [
    {"ref": f"ghcr.io/disney-train/trainer:{version}", "user": "1000:1000", "workdir": "/home/ray",
     "env": [path, f"VIRTUAL_ENV={venv}", "HOME=/home/ray", "PYTHONUNBUFFERED=1", "DS_BUILD_OPS=0"]},
    {"ref": f"ghcr.io/disney-train/operator:{version}", "user": "65532:65532", "workdir": "/tmp",
     "env": [path, f"VIRTUAL_ENV={venv}", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
     "entrypoint": ["disney-train-operator"], "cmd": ["run", "--all-namespaces"]},
]}))
EOF
  import "$scratch/spec.json"
}

case "${1:-}" in
  base) base ;;
  project) project ;;
  debian-root) debian_root ;;  # the cached Debian root alone (no containerd needed)
  import) import "${2:?usage: images.sh import SPEC.json}" ;;  # a spec of mkimage.py's (the tests' own images)
  *) die "usage: images.sh base|project|debian-root|import SPEC.json" ;;
esac
