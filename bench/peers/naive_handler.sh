#!/bin/sh
# The reference peer: a Serf event handler in the style of the classic Serf load-balancer demo.
# Written for the benchmarks only, so lbsync is compared with what people actually deploy.
# It keeps the same data flow as the demo, on purpose, flaws included:
#   * state is patched from each event's delta (stdin lines: name<TAB>addr<TAB>role<TAB>tags);
#   * member-join appends a `server addr:port;` line, member-leave/failed sed-deletes by name
#     (the name is used as a regex, unanchored at the start, as the demo did);
#   * no validation: nginx is reloaded after every event, whether the file changed or not,
#     and an empty pool writes `upstream { }`, which nginx refuses (the old config stays live).
# Environment (set on the Serf agent, which passes it to handlers):
#   NAIVE_SERVERS   the list of server lines the handler maintains
#   NAIVE_UPSTREAM  the upstream file nginx includes (rewritten from NAIVE_SERVERS each event)
#   NAIVE_RELOAD    the reload command, e.g. `nginx -s reload`
#   NAIVE_ROLE      the role to route to (default web)

ROLE="${NAIVE_ROLE:-web}"

while read -r name addr role tags; do
    [ "$role" = "$ROLE" ] || continue
    case "$SERF_EVENT" in
        member-join)
            port=$(echo "$tags" | tr ',' '\n' | sed -n 's/^port=//p')
            echo "    server $addr:${port:-80}; # $name" >> "$NAIVE_SERVERS"
            ;;
        member-leave|member-failed)
            sed -i "/# $name\$/d" "$NAIVE_SERVERS"
            ;;
    esac
done

{
    echo "upstream lbs_backend {"
    cat "$NAIVE_SERVERS"
    echo "}"
} > "$NAIVE_UPSTREAM"

$NAIVE_RELOAD
