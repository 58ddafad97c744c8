-p udp --dport 53;-p udp -m udp --dport 53;OK
-p udp -m udp --sport 67:68 --dport 67:68;=;OK
-p udp --source-port domain;-p udp -m udp --sport 53;OK
-p udp --destination-port 1000:2000;-p udp -m udp --dport 1000:2000;OK
-p udp -m udp ! --dport 53;=;OK
# "-p udp --dport 70000": iptables 1.8.9 silently wraps it to 4464; ipt2xdp rejects it (stricter on purpose)
-p udp --dport nosuchservice;;FAIL
-p udp --syn;;FAIL
