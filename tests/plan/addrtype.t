# -m addrtype (tests/test_plan.py HOST: 10.77.1.2 local and 10.77.1.255 broadcast on veth0, the one
# XDP device; 10.88.0.1 local on eth1; 127.0.0.0/8 on lo). Expected from xt_addrtype's semantics:
# destination types exact from the routes (XDP decides local destinations only); source types exact
# only where no route can change them (224.0.0.0/4, 0.0.0.0/8, 255.255.255.255).
-A INPUT -m addrtype --dst-type LOCAL -j DROP;xdp:ok.drop
-A INPUT -m addrtype --dst-type BROADCAST -j DROP;xdp:ok.drop
-A INPUT -m addrtype --dst-type MULTICAST -j DROP;xdp:ok.drop
-A INPUT -m addrtype --dst-type LOCAL,MULTICAST -j ACCEPT;xdp:ok.accept
-A INPUT -m addrtype ! --dst-type LOCAL -j DROP;xdp:ok.drop
-A INPUT -m addrtype --dst-type UNICAST -j DROP;netfilter:shadowed
-A INPUT -m addrtype --dst-type ANYCAST -j DROP;netfilter:never.empty
-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j DROP;xdp:ok.drop
-A INPUT -d 10.88.0.1/32 -m addrtype --dst-type LOCAL --limit-iface-in -j DROP;netfilter:never.empty
-A INPUT -d 10.88.0.1/32 -m addrtype --dst-type LOCAL -j DROP;xdp:ok.drop
-A INPUT -m addrtype --src-type LOCAL -j DROP;partial:skip.maybe-drop
-A INPUT -m addrtype --src-type MULTICAST -j DROP;partial:skip.maybe-drop
-A INPUT -m addrtype ! --src-type BLACKHOLE -j DROP;xdp:ok.drop
-A INPUT -m addrtype --src-type BROADCAST -j DROP;partial:skip.maybe-drop
-A INPUT -m addrtype --src-type LOCAL -j ACCEPT;netfilter:match.addrtype
-A INPUT -m addrtype --dst-type LOCAL --src-type LOCAL -j ACCEPT;netfilter:match.addrtype
-A INPUT -m addrtype --dst-type LOCAL -m addrtype --dst-type BROADCAST -j DROP;netfilter:never.empty
-A INPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 22 -j DROP;xdp:ok.drop
