# rule header options: -s -d -p -i -o -f (chain INPUT unless the line starts with :CHAIN)
-s 10.0.0.1;-s 10.0.0.1/32;OK
-s 10.0.0.1/32;=;OK
-s 192.168.1.7/24;-s 192.168.1.0/24;OK
-d 10.1.2.3/255.255.255.0;-d 10.1.2.0/24;OK
! -s 1.2.3.4;! -s 1.2.3.4/32;OK
-s 0.0.0.0/0;;OK
--source 10.0.0.0/8 --destination 10.1.0.0/16;-s 10.0.0.0/8 -d 10.1.0.0/16;OK
--src 10.0.0.0/8 --dst 10.1.0.0/16;-s 10.0.0.0/8 -d 10.1.0.0/16;OK
-p tcp -s 1.2.3.4 ! -i eth0;-s 1.2.3.4/32 ! -i eth0 -p tcp;OK
-p 6;-p tcp;OK
--protocol UDP;-p udp;OK
-p all;;OK
-p icmp;=;OK
! -p udp;=;OK
-p gre;=;OK
-p esp;=;OK
-i eth+;=;OK
-i +;;OK
--in-interface lo;-i lo;OK
! -i br-lan;=;OK
:OUTPUT -o eth0;=;OK
:OUTPUT --out-interface eth0;-o eth0;OK
-f;=;OK
! -f;=;OK
--fragment;-f;OK
-s ! 1.2.3.4;;FAIL
-p ! tcp;;FAIL
-s 1.2.3.4 -s 5.6.7.8;;FAIL
-s 300.1.1.1;;FAIL
-s 10.0.0.0/33;;FAIL
-p nosuchproto;;FAIL
-p 256;;FAIL
-o eth0;;FAIL
-i averyveryverylongname;;FAIL
--bogus;;FAIL
