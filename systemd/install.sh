#!/bin/sh
# Install e2edge as a systemd service: the `e2edge` user, /etc/e2edge/e2edge.yaml, the
# models directory /var/lib/e2edge/models, the unit, enabled. Safe to run again (it
# changes only what differs); --uninstall undoes it.
#
#   sudo systemd/install.sh                       # uses the `e2edge` found on PATH
#   sudo systemd/install.sh --bin /opt/e2edge/venv/bin/e2edge
#   systemd/install.sh --dry-run                  # print what it would do, change nothing
#   systemd/install.sh --root /tmp/img            # into an image or a test root, offline
#   sudo systemd/install.sh --uninstall [--purge] # --purge: also config, state, logs, user
#   sudo systemd/install.sh --no-enable           # install, but do not enable or start it
#
# The config is installed once and never overwritten: edit it, copy the packages into
# /var/lib/e2edge/models, then `systemctl start e2edge` (`systemctl reload e2edge` after
# later edits). DESTDIR=/tmp/img works like --root /tmp/img.
set -eu

NAME=e2edge
SRC=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
ROOT=${DESTDIR:-/}
BIN=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
ENABLE=1

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --bin) BIN=${2:?--bin needs a path}; shift ;;
        --bin=*) BIN=${1#--bin=} ;;
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --no-enable) ENABLE=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=${ROOT%/}
[ -n "$ROOT" ] || ROOT=/
if [ "$ROOT" = / ]; then P=""; else P=$ROOT; fi   # path prefix for every target file
UNIT=$P/etc/systemd/system/$NAME.service
CONF_DIR=$P/etc/$NAME
SYSUSERS=$P/etc/sysusers.d/$NAME.conf

# Every change goes through `run`, so --dry-run shows exactly what would happen.
run() {
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}
say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

# Live system (not an offline root): systemd must be told about unit changes.
live_systemd() { [ -z "$P" ] && [ -d /run/systemd/system ]; }

if [ -z "$P" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run it as root (sudo), or try --dry-run / --root DIR"
fi

systemctl_() {
    if [ -n "$P" ]; then run systemctl --root="$ROOT" "$@"; else run systemctl "$@"; fi
}

# Numeric ids of the e2edge user and group inside ROOT (the host may not know the name).
user_id() { awk -F: -v n="$NAME" '$1 == n { print $3 }' "$P/etc/passwd" 2>/dev/null || true; }
group_id() { awk -F: -v n="$NAME" '$1 == n { print $3 }' "$P/etc/group" 2>/dev/null || true; }

# chown only as root; a non-root --root install (a test, an image build) keeps owners.
chown_() {
    gid=$(group_id)
    if [ "$(id -u)" = 0 ] && [ -n "$gid" ]; then run chown "root:$gid" "$@"; fi
}

# The daemon's own files (its StateDirectory) belong to it; again only as root.
chown_daemon() {
    uid=$(user_id)
    gid=$(group_id)
    if [ "$(id -u)" = 0 ] && [ -n "$uid" ] && [ -n "$gid" ]; then run chown "$uid:$gid" "$@"; fi
}

uninstall() {
    if [ -e "$UNIT" ] || [ -L "$P/etc/systemd/system/multi-user.target.wants/$NAME.service" ]
    then
        if live_systemd; then systemctl_ disable --now "$NAME.service"
        else systemctl_ disable "$NAME.service"; fi
    fi
    if [ -e "$UNIT" ]; then run rm -f "$UNIT"; fi
    if live_systemd; then run systemctl daemon-reload; fi
    if [ "$PURGE" = 1 ]; then
        for dir in "$CONF_DIR" "$P/var/lib/$NAME" "$P/var/log/$NAME" "$P/var/cache/$NAME"; do
            if [ -e "$dir" ]; then run rm -rf "$dir"; fi
        done
        if [ -e "$SYSUSERS" ]; then run rm -f "$SYSUSERS"; fi
        if grep -q "^$NAME:" "$P/etc/passwd" 2>/dev/null; then
            if [ -n "$P" ]; then run userdel --prefix "$ROOT" "$NAME"; else run userdel "$NAME"; fi
        fi
        if grep -q "^$NAME:" "$P/etc/group" 2>/dev/null; then
            if [ -n "$P" ]; then run groupdel --prefix "$ROOT" "$NAME"
            else run groupdel "$NAME"; fi
        fi
        say "removed the unit, config, state, logs and the $NAME user"
    else
        say "removed the unit; kept $CONF_DIR, /var/lib/$NAME and the $NAME user (--purge removes them)"
    fi
}

install_user() {
    # systemd-sysusers is the declarative way (and works on an offline root); the
    # file also lets a later image rebuild recreate the user.
    tmp=$(mktemp)
    printf 'u %s - "e2edge model daemon" /var/lib/%s /usr/sbin/nologin\n' "$NAME" "$NAME" >"$tmp"
    if ! cmp -s "$tmp" "$SYSUSERS" 2>/dev/null; then
        run mkdir -p "$(dirname "$SYSUSERS")"
        run install -m 0644 "$tmp" "$SYSUSERS"
    fi
    rm -f "$tmp"
    if grep -q "^$NAME:" "$P/etc/passwd" 2>/dev/null; then
        say "user $NAME exists"
    elif command -v systemd-sysusers >/dev/null; then
        if [ -n "$P" ]; then run systemd-sysusers --root="$ROOT" "$SYSUSERS"
        else run systemd-sysusers "$SYSUSERS"; fi
    else
        set -- --system --user-group --home-dir "/var/lib/$NAME" --no-create-home \
            --shell /usr/sbin/nologin --comment "e2edge model daemon"
        if [ -n "$P" ]; then run useradd --prefix "$ROOT" "$@" "$NAME"
        else run useradd "$@" "$NAME"; fi
    fi
}

install_config() {
    run mkdir -p "$CONF_DIR"
    run chmod 0750 "$CONF_DIR"
    chown_ "$CONF_DIR"
    if [ -e "$CONF_DIR/$NAME.yaml" ]; then
        say "kept the existing $CONF_DIR/$NAME.yaml"
    else
        run install -m 0640 "$SRC/$NAME.yaml" "$CONF_DIR/$NAME.yaml"
        chown_ "$CONF_DIR/$NAME.yaml"
    fi
}

install_models_dir() {
    # Where the example config's packages live: /var/lib/e2edge is the unit's
    # StateDirectory, the one place besides the runtime and log folders that
    # ProtectSystem=strict leaves writable for the daemon (and ProtectHome hides /home).
    state=$P/var/lib/$NAME
    if [ -d "$state/models" ]; then
        say "kept the existing $state/models"
        return
    fi
    run mkdir -p "$state/models"
    run chmod 0750 "$state" "$state/models"
    chown_daemon "$state" "$state/models"
}

install_unit() {
    if [ -z "$BIN" ]; then
        BIN=$(command -v e2edge || true)
        [ -n "$BIN" ] || die "no e2edge command on PATH; pass --bin /path/to/e2edge"
    fi
    case $BIN in /*) ;; *) die "--bin must be an absolute path, got $BIN" ;; esac
    case $BIN in /home/*|/root/*|/tmp/*)
        say "warning: $BIN is under /home, /root or /tmp, which the unit hides" \
            "(ProtectHome=, PrivateTmp=); install e2edge under /opt or /usr/local" ;;
    esac
    tmp=$(mktemp)
    sed "s|^ExecStart=/usr/local/bin/e2edge |ExecStart=$BIN |" "$SRC/$NAME.service" >"$tmp"
    if cmp -s "$tmp" "$UNIT" 2>/dev/null; then
        say "$UNIT is up to date"
    else
        run mkdir -p "$(dirname "$UNIT")"
        run install -m 0644 "$tmp" "$UNIT"
        if live_systemd; then run systemctl daemon-reload; fi
    fi
    rm -f "$tmp"
    if [ "$ENABLE" = 1 ]; then systemctl_ enable "$NAME.service"; fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi
[ -r "$SRC/$NAME.service" ] && [ -r "$SRC/$NAME.yaml" ] || die "run it from the source tree ($SRC)"
command -v systemctl >/dev/null || [ "$ENABLE" = 0 ] || die "systemctl not found (--no-enable skips it)"
install_user
install_config
install_models_dir
install_unit
say "done. Copy the model packages into $P/var/lib/$NAME/models, edit $CONF_DIR/$NAME.yaml, then: systemctl start $NAME"
