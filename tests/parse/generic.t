# extensions ipt2xdp does not model: kept option by option
-m pkttype --pkt-type broadcast;=;OK
-m hashlimit --hashlimit-upto 5/sec --hashlimit-burst 5 --hashlimit-name x;=;OK
-m string --string "abc" --algo bm;=;OK
:OUTPUT -m owner --uid-owner 0;=;OK
-m connlimit --connlimit-above 10 --connlimit-mask 32 --connlimit-saddr;=;OK
-j MARK --set-xmark 0x1/0xffffffff;=;OK
-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff;=;OK
-j NFQUEUE --queue-num 3;=;OK
:FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu;=;OK
