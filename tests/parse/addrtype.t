-m addrtype --dst-type LOCAL;=;OK
-m addrtype ! --src-type LOCAL,UNICAST;-m addrtype ! --src-type UNICAST,LOCAL;OK
-m addrtype --dst-type LOCAL --limit-iface-in;=;OK
:OUTPUT -m addrtype --src-type LOCAL --limit-iface-out;=;OK
-m addrtype --src-type BOGUS;;FAIL
