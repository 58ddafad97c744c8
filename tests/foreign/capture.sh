#!/bin/sh
# Re-capture the nft -j fixtures of tests/test_foreign.py in a throwaway network namespace.
# Usage (root): sh tests/foreign/capture.sh   (writes tests/foreign/*.json next to this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ns=i2x-capture-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
run() { nsenter --net=/var/run/netns/"$ns" "$@"; }
capture() {  # name, then an nft script on stdin; the namespace's ruleset is flushed first
    run nft flush ruleset
    run iptables-nft -F 2>/dev/null || true
    run nft -f -
    run nft -j list ruleset | python3 -m json.tool > "$here/$1.json"
}
run ip link add d0 type veth peer name d0p
run ip link add d1 type veth peer name d1p
capture xtables <<'NFT'
NFT
run iptables-nft -A INPUT -p tcp --dport 22 -j DROP
run iptables-nft -t nat -A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 8080
run nft -j list ruleset | python3 -m json.tool > "$here/xtables.json"
capture native_dnat <<'NFT'
table ip natty {
    chain pre { type nat hook prerouting priority dstnat; policy accept; tcp dport 2222 dnat to 10.0.0.9:22; }
}
NFT
capture native_neutral <<'NFT'
table inet plain {
    set blocked { type ipv4_addr; elements = { 192.0.2.1 } }
    chain pre { type filter hook prerouting priority -150; policy accept; ip saddr @blocked drop; tcp dport 22 accept; jump sub; }
    chain sub { ct state established,related accept; udp dport 53 return; }
    chain empty_in { type filter hook input priority 0; policy accept; }
    chain late_in { type filter hook input priority 10; policy accept; tcp dport 22 log prefix "late " counter reject; }
    chain out { type filter hook output priority 0; policy accept; counter; }
}
NFT
capture native_counter_input <<'NFT'
table inet logger {
    chain in { type filter hook input priority -10; policy accept; tcp dport 22 counter; }
}
NFT
capture native_deep_jump <<'NFT'
table inet deep {
    chain pre { type filter hook prerouting priority 0; policy accept; ip protocol tcp jump a; }
    chain a { tcp dport 1-1000 goto b; }
    chain b { tcp dport 22 meta mark set 7; }
}
NFT
capture native_statements <<'NFT'
table inet misc {
    set seen { type ipv4_addr; flags dynamic; }
    chain limit_in { type filter hook input priority -5; policy accept; limit rate 10/second accept; }
    chain vmap_pre { type filter hook prerouting priority 0; policy accept; tcp dport vmap { 22 : accept, 23 : drop }; }
    chain setupd { type filter hook prerouting priority 0; policy accept; update @seen { ip saddr }; }
    chain queue_in { type filter hook input priority 0; policy accept; udp dport 9 quota over 10 mbytes drop; }
    chain notrack_pre { type filter hook prerouting priority -300; policy accept; udp dport 53 notrack; }
}
NFT
capture native_bounds <<'NFT'
table inet bounds {
    chain pre { type filter hook prerouting priority 0; policy accept;
        ip saddr 10.0.0.0/8 jump x
        ip6 saddr ::1 counter
        meta nfproto ipv6 log
        ip daddr { 192.0.2.1, 192.0.2.7 } udp dport { 53, 5353 } counter accept
        tcp dport != 22 meta mark set 1
        tcp dport vmap { 80 : jump web, 81 : accept }
    }
    chain x { counter; }
    chain web { ip saddr 198.51.100.0/24 log; }
}
NFT
capture native_stateful_reads <<'NFT'
table inet reads {
    set counted { type ipv4_addr; counter; elements = { 192.0.2.1 } }
    set plain { type ipv4_addr; elements = { 192.0.2.2 } }
    chain pre { type filter hook prerouting priority 0; policy accept;
        ip saddr @plain accept
        udp dport 5000 ip saddr @counted accept
        tcp dport 6000 numgen inc mod 2 0 accept
    }
}
NFT
capture netdev_ingress <<'NFT'
table netdev edge {
    chain on_d0 { type filter hook ingress device "d0" priority 0; policy accept; ip saddr 192.0.2.0/24 counter drop; }
    chain on_d1 { type filter hook ingress device "d1" priority 0; policy accept; ip saddr 192.0.2.0/24 drop; }
}
NFT
capture ip_filter_native <<'NFT'
table ip filter {
    chain INPUT { type filter hook input priority 0; policy accept; tcp dport 22 ct mark set 5 log; }
}
NFT
# the shape kube-proxy's nftables mode writes (its maps, sets and chain layout), services made up
capture native_kube_proxy <<'NFT'
table ip kube-proxy {
    comment "rules for kube-proxy"
    set cluster-ips { type ipv4_addr; elements = { 10.96.0.1, 10.96.0.10 } }
    set nodeport-ips { type ipv4_addr; elements = { 10.77.1.2 } }
    map service-ips { type ipv4_addr . inet_proto . inet_service : verdict;
        elements = { 10.96.0.10 . udp . 53 : goto service-dns, 10.96.0.1 . tcp . 443 : goto service-api,
                     192.0.2.50 . tcp . 443 : goto external-api } }
    map service-nodeports { type inet_proto . inet_service : verdict; elements = { tcp . 30080 : goto external-api } }
    map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict;
        elements = { 10.96.0.20 . tcp . 80 : goto reject-chain } }
    map no-endpoint-nodeports { type inet_proto . inet_service : verdict; elements = { tcp . 30090 : drop } }
    map firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict;
        elements = { 192.0.2.50 . tcp . 443 : goto firewall-api } }
    chain filter-prerouting { type filter hook prerouting priority -110; policy accept; ct state new jump firewall-check; }
    chain filter-input { type filter hook input priority -110; policy accept;
        ct state new jump nodeport-endpoints-check; ct state new jump service-endpoints-check; }
    chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
    chain firewall-check { ip daddr . meta l4proto . th dport vmap @firewall-ips; }
    chain firewall-api { ip saddr != { 198.51.100.0/24 } drop; }
    chain reject-chain { reject; }
    chain nodeport-endpoints-check { ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports; }
    chain service-endpoints-check { ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }
    chain services { ip daddr . meta l4proto . th dport vmap @service-ips;
        ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports; }
    chain mark-for-masquerade { mark set mark or 0x4000; }
    chain service-dns { ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade;
        numgen random mod 2 vmap { 0 : goto endpoint-dns-a, 1 : goto endpoint-dns-b }; }
    chain endpoint-dns-a { ip saddr 10.244.1.5 jump mark-for-masquerade; meta l4proto udp dnat to 10.244.1.5:53; }
    chain endpoint-dns-b { ip saddr 10.244.2.5 jump mark-for-masquerade; meta l4proto udp dnat to 10.244.2.5:53; }
    chain service-api { jump mark-for-masquerade; goto endpoint-api; }
    chain external-api { jump mark-for-masquerade; goto service-api; }
    chain endpoint-api { meta l4proto tcp dnat to 10.77.1.9:6443; }
}
NFT
run nft flush ruleset
