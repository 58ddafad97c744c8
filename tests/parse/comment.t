-m comment --comment hello;=;OK
-m comment --comment "hello world";=;OK
-m comment --comment "a \"b\"";=;OK
-m comment --comment "it's";-m comment --comment "it\'s";OK
-m comment --comment "x";-m comment --comment x;OK
-m comment --comment "10.0.0.1:80";=;OK
-m comment --comment "!";=;OK
! -m comment --comment x;;FAIL
