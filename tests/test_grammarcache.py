# SPDX-License-Identifier: GPL-2.0-only
"""The analysed grammar is cached between processes only where nobody but root can touch the
file, and a parser loaded from the cache parses exactly as a freshly built one."""
import os
import shutil
import tempfile

import pytest
from lark import Lark

from ipt2xdp import grammarcache, parse, savegrammar
from ipt2xdp.resources import grammar_path

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the cache is only used by root")
TEXT = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:web - [0:0]
-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment "ssh \\"admin\\"" -j ACCEPT
-A INPUT -p udp -m multiport --dports 53,123 -j web
-A web -m conntrack --ctstate NEW -j LOG --log-prefix "new: "
COMMIT
"""


def _make(cache):
    return Lark(grammar_path().read_text(), parser="lalr", lexer="contextual", start=["start", "line", "words"],
                maybe_placeholders=False, edit_terminals=savegrammar._possessive_rule_block, cache=cache or False)


@pytest.fixture
def trusted_root():
    root = f"/run/ipt2xdp-test-grammar-{os.getpid()}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


@needs_root
def test_cached_parser_parses_like_a_fresh_one(trusted_root, monkeypatch):
    path = grammarcache.cache_file(grammar_path().read_text(), savegrammar._possessive_rule_block, trusted_root)
    assert path is not None and path.startswith(trusted_root) and not os.path.exists(path)
    grammarcache.build(_make, path)
    assert os.path.exists(path) and os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    fresh = parse.parse(TEXT)
    monkeypatch.setattr(savegrammar, "_LARK", grammarcache.build(_make, path))  # loaded from the file
    assert parse.parse(TEXT) == fresh
    assert [t.pattern.to_regexp() for t in savegrammar._LARK.terminals] == [t.pattern.to_regexp() for t in _make(None).terminals]


@needs_root
def test_no_cache_where_others_could_write():
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp, which everybody may write to
        assert grammarcache.cache_file(grammar_path().read_text(), savegrammar._possessive_rule_block, tmp) is None


def test_no_cache_for_other_users(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert grammarcache.cache_file(grammar_path().read_text(), savegrammar._possessive_rule_block, "/run/x") is None
