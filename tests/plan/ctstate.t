# Connection state per conntrack class (policy ACCEPT, XDP on veth0; host: nf_conntrack_tcp_loose=1,
# nf_conntrack_checksum=1, no helpers). <rule>;<kind>:<reason code>, worked out from xt_conntrack.c
# (conntrack_mt: without an entry, INVALID or UNTRACKED, only --ctstate is tested; --ctproto compares
# nf_ct_protonum, the packet's own protocol for TCP/UDP) and nf_conntrack_proto_tcp.c (a packet
# without an entry: SYN starts a connection, ACK is picked up with tcp_loose, other flags INVALID).
# --ctproto: exact for TCP/UDP; ICMP errors carry another flow's entry, so unknown there
-A INPUT -m conntrack --ctstate NEW --ctproto 6 -j ACCEPT;partial:match.ctstate-unsure
-A INPUT -m conntrack --ctproto 17 -j DROP;partial:skip.maybe-drop
-A INPUT -m conntrack ! --ctproto 6 --ctstate NEW -j ACCEPT;partial:match.ctstate-unsure
-A INPUT -m conntrack --ctproto tcp -j ACCEPT;partial:match.ctstate-unsure
-A INPUT -p icmp -m conntrack --ctproto 1 -j ACCEPT;netfilter:match.ctstate-unsure
-A INPUT -m conntrack --ctstate NEW,RELATED --ctproto 6 -j LOG;partial:match.ctstate-unsure
# an INVALID packet has no entry: --ctproto is not tested, so this also matches INVALID UDP
-A INPUT -m conntrack --ctstate INVALID --ctproto 6 -j DROP;partial:skip.maybe-drop
# other options stay unmodelled
-A INPUT -m conntrack --ctstate NEW --ctorigdstport 53 -j ACCEPT;netfilter:match.conntrack
-A INPUT -m conntrack --ctstate NEW --ctproto 17 --ctorigsrcport 68 -j ACCEPT;netfilter:match.conntrack
# NEW vs INVALID: TCP flags conntrack refuses are INVALID whatever the checksum
-A INPUT -p tcp -m conntrack --ctstate INVALID -j DROP;partial:skip.maybe-drop
-A INPUT -p tcp -m tcp --tcp-flags SYN,FIN SYN,FIN -m state --state NEW -j ACCEPT;partial:ctstate.lookup
-A INPUT -p tcp -m tcp --tcp-flags SYN,ACK SYN,ACK -m state --state NEW -j DROP;partial:skip.maybe-drop
-A INPUT -p tcp -m tcp --tcp-flags SYN,RST,ACK,FIN SYN -m conntrack --ctstate INVALID -j ACCEPT;partial:ctstate.lookup
-A INPUT -m state --state NEW -p udp -j ACCEPT;partial:match.ctstate-unsure
-A INPUT -m conntrack --ctstate INVALID -j LOG;partial:match.ctstate-unsure
