# -m set decisions (policy ACCEPT, XDP on veth0): <rule>;<kind>:<reason code>
# Lines starting with @ are `ipset save` lines: the sets the host holds (read at the import).
@create bl hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
@add bl 192.0.2.1
@add bl 192.0.2.9
@create mine hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xb
@add mine 10.77.1.2
@create nets hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2
@add nets 198.51.100.0/24
@create masked hash:ip family inet hashsize 1024 maxelem 65536 netmask 24 bucketsize 12 initval 0x3
@add masked 203.0.113.0
@create f2b hash:ip family inet hashsize 1024 maxelem 65536 timeout 600 bucketsize 12 initval 0x4
@add f2b 192.0.2.77 timeout 412
@create empty hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5
@create cnt hash:ip family inet hashsize 1024 maxelem 65536 counters bucketsize 12 initval 0x6
@add cnt 192.0.2.5 packets 0 bytes 0
@create excl hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x7
@add excl 10.0.0.0/8
@add excl 10.1.0.0/16 nomatch
@create ports hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x8
@add ports 192.0.2.1,tcp:80
@create six hash:ip family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x9
@create bits hash:ip family inet hashsize 1024 maxelem 65536 bitmask 255.255.0.0 bucketsize 12 initval 0xa
-A INPUT -m set --match-set bl src -j DROP;xdp:ok.set-drop
-A INPUT -m set --match-set mine dst -j DROP;xdp:ok.set-drop
# members that are not local destinations: the not-local guard defers them before INPUT's rules
-A INPUT -m set --match-set bl dst -j DROP;netfilter:shadowed
-A INPUT -m set --match-set bl src,dst -j DROP;xdp:ok.set-drop
-A INPUT -m set ! --match-set bl src -j DROP;xdp:ok.set-drop
-A INPUT -p tcp -m set --match-set nets src -m tcp --dport 22 -j DROP;xdp:ok.set-drop
-A INPUT -m set --match-set masked src -j DROP;xdp:ok.set-drop
-A INPUT -m set --match-set f2b src -j DROP;xdp:ok.set-drop
-A INPUT -m set --match-set bl src -j ACCEPT;xdp:ok.accept
-A INPUT -m set --match-set empty src -j DROP;netfilter:never.empty
-A INPUT -m set --match-set cnt src -j DROP;netfilter:match.set-counters
-A INPUT -m set --match-set cnt src ! --update-counters -j DROP;xdp:ok.set-drop
-A INPUT -m set --match-set bl src --return-nomatch -j DROP;netfilter:match.set-options
-A INPUT -m set --match-set bl src --packets-gt 10 -j DROP;netfilter:match.set-options
-A INPUT -m set --match-set excl src -j DROP;netfilter:match.set-nomatch
-A INPUT -m set --match-set ports src,dst -j DROP;netfilter:match.set-type
-A INPUT -m set --match-set six src -j DROP;netfilter:match.set-family
-A INPUT -m set --match-set bits src -j DROP;netfilter:match.set-type
-A INPUT -m set --match-set nosuch src -j DROP;netfilter:match.set-missing
-A INPUT -m set --match-set bl src -j LOG;netfilter:target.log
-A INPUT -m set --match-set bl src -j SET --del-set bl src;netfilter:match.set-target
-A INPUT -m set --match-set nets src -j SET --del-set bl src;netfilter:target.set
