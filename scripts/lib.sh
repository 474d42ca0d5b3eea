# Shared by the scripts that install test dependencies. POSIX sh; source it.
#
# install_missing LABEL SPEC... — each SPEC is CHECK:PACKAGE, where CHECK is a command name that
# must be on PATH or an absolute path that must exist; the Debian packages of the failed checks
# are installed with apt-get (sudo when not root and sudo exists), without recommends.
install_missing() {
    label=$1
    shift
    missing=""
    for spec in "$@"; do
        check=${spec%%:*}
        pkg=${spec#*:}
        case "$check" in
            /*) [ -e "$check" ] && continue ;;
            *) command -v "$check" >/dev/null 2>&1 && continue ;;
        esac
        case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
    done
    if [ -z "$missing" ]; then
        echo "$label: all present"
        return 0
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    fi
    echo "$label: installing$missing"
    $SUDO apt-get update -q
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
    for spec in "$@"; do
        check=${spec%%:*}
        case "$check" in
            /*) [ -e "$check" ] || { echo "$label: $check still missing" >&2; return 1; } ;;
            *) command -v "$check" >/dev/null 2>&1 || { echo "$label: $check still missing" >&2; return 1; } ;;
        esac
    done
    echo "$label: ok"
}
