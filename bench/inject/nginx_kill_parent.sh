#!/bin/sh
# A fault injector for bench/faultsuite.py, used as lbsync's `nginx_bin`: nginx itself, except that
# `nginx -t` on the live config (-c $BENCH_CRASH_CONF) SIGKILLs the caller (lbsync run, or the hook)
# once, when the trigger file $BENCH_CRASH_TRIGGER exists. That is the crash point between the
# install of a new upstream file and the reload: the file says one thing, nginx serves another.
if [ -n "${BENCH_CRASH_TRIGGER:-}" ] && [ -e "$BENCH_CRASH_TRIGGER" ]; then
    case " $* " in
        *" -t "*" -c $BENCH_CRASH_CONF "*)
            rm -f "$BENCH_CRASH_TRIGGER"
            kill -9 "$PPID"
            exit 1
            ;;
    esac
fi
exec "$BENCH_REAL_NGINX" "$@"
