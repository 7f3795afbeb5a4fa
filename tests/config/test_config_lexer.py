"""stratum1/config/lexer.py: words, quotes, comments, line numbering."""

from __future__ import annotations

from stratum1.config.lexer import Token, tokenize, tokenize_line


def test_words_quotes_and_comments() -> None:
    tokens, err = tokenize_line('setvar a = "b # c" # comment')
    assert err is None
    assert tokens == [Token("setvar"), Token("a"), Token("="), Token("b # c", quoted=True)]


def test_hash_inside_a_word_starts_a_comment() -> None:
    assert tokenize_line("driftfile /x#y")[0] == [Token("driftfile"), Token("/x")]


def test_unterminated_quote_and_control_characters_are_errors() -> None:
    assert tokenize_line('a "b')[1] == "unterminated quoted string"
    assert "control character 0x00" in (tokenize_line("a\x00b")[1] or "")


def test_line_numbers_count_newlines_only() -> None:
    statements, diags = tokenize("a\n\n  b c\r\n# x\nd\x0ce\n", "f")
    assert [(s.directive, s.location.line) for s in statements] == [("a", 1), ("b", 3), ("d", 5)]
    assert statements[2].args == (Token("e"),)
    assert diags == []


def test_bom_is_ignored_and_directive_lowercased() -> None:
    (s,), _ = tokenize("\ufeffSERVER x\n", "f")
    assert s.directive == "server" and s.raw_directive == "SERVER"


def test_bad_lines_are_reported_and_skipped() -> None:
    statements, diags = tokenize('ok 1\nsetvar "x\nok 2\n', "f")
    assert [s.location.line for s in statements] == [1, 3]
    assert [(str(d.location), d.directive) for d in diags] == [("f:2", "setvar")]


def test_quoted_keyword_is_not_a_keyword() -> None:
    assert Token("iburst", quoted=True).keyword == ""
    assert Token("IBURST").keyword == "iburst"
