-j NFLOG;=;OK
-j NFLOG --nflog-group 5;=;OK
-j NFLOG --nflog-prefix "hello world" --nflog-group 2;=;OK
-j NFLOG --nflog-prefix x --nflog-threshold 10;=;OK
-j NFLOG --nflog-size 128;=;OK
# --nflog-range: legacy prints it, iptables-nft 1.8.9 drops it; not a portable line
-j NFLOG --nflog-group 70000;;FAIL
