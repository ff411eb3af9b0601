"""
The PLY lexer and grammar of C{cig.conf}; L{cryptify.config.cig} turns
what it parses into a L{CigConfig}.
"""

from __future__ import annotations

import re

import attrs

from cryptify.config._ply import LexToken, Production

from ._base import (
    STRING_REGEX,
    ConfigError,
    Grammar,
    Tok,
    expected_list,
    grammar,
    token_rule,
    unquote,
)

KEYWORDS = (
    "map entry tel sip interfaces extension source bind messaging rtp_port_range "
    "rtp_remote_addr_override translate_map rule match translation mailboxes read write "
    "path map_from map_to crs address keystore ca relay control management cookie socket "
    "logging dir notify true false trusted_peer untrusted_answer tcp_idle_timeout "
    "pbx_account username password password_file register aor "
    "tls_certificate tls_key tls_ca tls_port metrics srtp call_records call_records_syslog "
    "fast_path pbx_challenge realm algorithm"
).split()
RESERVED = {k: k.upper() for k in KEYWORDS}
KEYWORD_TOKENS = frozenset(RESERVED.values()) - {"TRUE", "FALSE"}
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@attrs.frozen
class Stmt:
    """
    A parsed statement: its keyword and the words after it.
    """

    kw: Tok
    args: tuple[Tok, ...]


@attrs.frozen
class Block:
    """
    A parsed C{{...}} block: keyword, optional name, contents.
    """

    kw: Tok
    name: Tok | None
    body: tuple[Stmt | Block, ...]


class CigGrammar(Grammar):
    tokens = (*RESERVED.values(), "WORD", "STRING", "LBRACE", "RBRACE", "SEMI")
    token_names = {
        **{v: f"'{k}'" for k, v in RESERVED.items()},
        "WORD": "a name or value",
        "STRING": "a quoted string",
        "LBRACE": "'{'",
        "RBRACE": "'}'",
        "SEMI": "';'",
    }
    t_ignore = " \t\r\f\v"

    @token_rule(r"\n+")
    def t_newline(self, t: LexToken) -> None:
        t.lexer.lineno += len(t.value)

    @token_rule(r"//[^\n]*")
    def t_line_comment(self, t: LexToken) -> None:
        return None

    @token_rule(r"/\*[\s\S]*?\*/")
    def t_block_comment(self, t: LexToken) -> None:
        t.lexer.lineno += t.value.count("\n")

    @token_rule(r"\*/")
    def t_stray_comment_end(self, t: LexToken) -> None:
        raise self.ctx.error(
            "'*/' outside a comment", self.ctx.tok(t.value, t.lexpos), expected="'/*' before it"
        )

    @token_rule(STRING_REGEX)
    def t_STRING(self, t: LexToken) -> LexToken | None:
        t.value = self.ctx.tok(unquote(t.value), t.lexpos, quoted=True, type="STRING")
        return t

    @token_rule(r"[A-Za-z0-9_.:\-]+(?:/[0-9]+)?")
    def t_WORD(self, t: LexToken) -> LexToken | None:
        t.type = RESERVED.get(t.value, "WORD")
        t.value = self.ctx.tok(t.value, t.lexpos, type=t.type)
        return t

    @token_rule(r"\{")
    def t_LBRACE(self, t: LexToken) -> LexToken | None:
        t.value = self.ctx.tok(t.value, t.lexpos, type=t.type)
        return t

    @token_rule(r"\}")
    def t_RBRACE(self, t: LexToken) -> LexToken | None:
        t.value = self.ctx.tok(t.value, t.lexpos, type=t.type)
        return t

    @token_rule(r";")
    def t_SEMI(self, t: LexToken) -> LexToken | None:
        t.value = self.ctx.tok(t.value, t.lexpos, type=t.type)
        return t

    def t_error(self, t: LexToken) -> None:
        tok = self.ctx.tok(t.value[0], t.lexpos)
        if t.value.startswith("/*"):
            raise self.ctx.error("unterminated comment", tok, expected="'*/'")
        if t.value.startswith('"'):
            raise self.ctx.error("unterminated string", tok, expected="a closing '\"' on this line")
        raise self.ctx.error("unexpected character", tok)

    def syntax_error(self, t: LexToken | None, expected: list[str]) -> ConfigError:
        if t is not None and t.type == "RBRACE" and "$end" in expected:
            return self.ctx.error("'}' without a matching '{'", t.value)
        prev = self.prev
        if prev is not None and prev.type == "RBRACE":
            # A ';' after '}' is allowed but not worth suggesting.
            expected = [e for e in expected if e != "SEMI"]
        elif "SEMI" in expected and (t is None or prev is None or t.value.line == prev.value.line):
            # Mid-statement, on the same line: the statement is complete.
            expected = ["SEMI"] + [e for e in expected if e in ("RBRACE", "$end")]
        statement_level = any(e in KEYWORD_TOKENS for e in expected)
        if t is not None and t.type == "WORD" and "WORD" not in expected and statement_level:
            names = expected_list(self.name_of(e) for e in expected)
            return self.ctx.error("unknown keyword", t.value, expected=names)
        return super().syntax_error(t, expected)

    # Statement ends.

    @grammar("semi : SEMI")
    def p_semi(self, p: Production) -> None:
        p[0] = None

    @grammar("semi : ")
    def p_semi_missing(self, p: Production) -> None:
        nxt, prev = self.last, self.prev
        if (
            nxt is not None
            and prev is not None
            and nxt.type != "RBRACE"
            and nxt.value.line == prev.value.line
        ):
            raise self.ctx.error("missing ';' before", nxt.value, expected="';' or a line break")
        p[0] = None

    @grammar("block_end : SEMI\n|")
    def p_block_end(self, p: Production) -> None:
        p[0] = None

    @grammar("name : WORD\n| " + "\n| ".join(RESERVED.values()))
    def p_name(self, p: Production) -> None:
        p[0] = p[1]

    # Top level.

    @grammar("config : items")
    def p_config(self, p: Production) -> None:
        p[0] = p[1]

    @grammar(
        "items : items map_block\n| items translate_block\n| items interfaces_block"
        "\n| items mailboxes_block\n| items setting_block\n| items notify_stmt"
    )
    def p_items(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("items : ")
    def p_items_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("notify_stmt : NOTIFY STRING semi")
    def p_notify(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    # map NAME { entry ...; }

    @grammar("map_block : MAP name LBRACE entries RBRACE block_end")
    def p_map_block(self, p: Production) -> None:
        p[0] = Block(p[1], p[2], tuple(p[4]))

    @grammar("entries : entries entry")
    def p_entries(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("entries : ")
    def p_entries_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("entry : ENTRY name TEL STRING SIP STRING semi")
    def p_entry_tel_sip(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2], p[4], p[6]))

    @grammar("entry : ENTRY name SIP STRING TEL STRING semi")
    def p_entry_sip_tel(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2], p[6], p[4]))

    # translate_map NAME { rule ...; }

    @grammar("translate_block : TRANSLATE_MAP name LBRACE rules RBRACE block_end")
    def p_translate_block(self, p: Production) -> None:
        p[0] = Block(p[1], p[2], tuple(p[4]))

    @grammar("rules : rules rule")
    def p_rules(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("rules : ")
    def p_rules_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("rule : RULE MATCH STRING TRANSLATION STRING semi")
    def p_rule_match_first(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[3], p[5]))

    @grammar("rule : RULE TRANSLATION STRING MATCH STRING semi")
    def p_rule_translation_first(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[5], p[3]))

    # interfaces { tel { ... } sip { ... } }

    @grammar("interfaces_block : INTERFACES LBRACE ifaces RBRACE block_end")
    def p_interfaces_block(self, p: Production) -> None:
        p[0] = Block(p[1], None, tuple(p[3]))

    @grammar("ifaces : ifaces iface")
    def p_ifaces(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("ifaces : ")
    def p_ifaces_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("iface : TEL LBRACE istmts RBRACE block_end\n| SIP LBRACE istmts RBRACE block_end")
    def p_iface(self, p: Production) -> None:
        p[0] = Block(p[1], None, tuple(p[3]))

    @grammar("istmts : istmts istmt")
    def p_istmts(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("istmts : ")
    def p_istmts_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("istmt : EXTENSION MAP name semi\n| SOURCE MAP name semi")
    def p_istmt_map(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[3],))

    @grammar(
        "istmt : BIND WORD semi\n| MESSAGING TRUE semi\n| MESSAGING FALSE semi"
        "\n| TRUSTED_PEER WORD semi\n| UNTRUSTED_ANSWER WORD semi\n| TCP_IDLE_TIMEOUT WORD semi"
        "\n| TLS_CERTIFICATE STRING semi\n| TLS_KEY STRING semi\n| TLS_CA STRING semi"
        "\n| TLS_PORT WORD semi\n| SRTP WORD semi"
    )
    def p_istmt_one(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    @grammar(
        "istmt : BIND WORD WORD semi\n| RTP_PORT_RANGE WORD WORD semi"
        "\n| RTP_REMOTE_ADDR_OVERRIDE WORD WORD semi"
    )
    def p_istmt_two(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2], p[3]))

    # pbx_account "SIP-URI" { username "U"; password_file "PATH"; register SECONDS; }

    @grammar("istmt : PBX_ACCOUNT STRING LBRACE pbx_stmts RBRACE block_end")
    def p_istmt_pbx(self, p: Production) -> None:
        p[0] = Block(p[1], p[2], tuple(p[4]))

    @grammar("pbx_stmts : pbx_stmts pbx_stmt")
    def p_pbx_stmts(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("pbx_stmts : ")
    def p_pbx_stmts_empty(self, p: Production) -> None:
        p[0] = []

    @grammar(
        "pbx_stmt : USERNAME STRING semi\n| PASSWORD STRING semi\n| PASSWORD_FILE STRING semi"
        "\n| REGISTER WORD semi\n| AOR STRING semi"
    )
    def p_pbx_stmt(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    # pbx_challenge "ADDR|CIDR" { realm "R"; username "U"; password_file "PATH"; algorithm A [B]; }

    @grammar("istmt : PBX_CHALLENGE STRING LBRACE challenge_stmts RBRACE block_end")
    def p_istmt_challenge(self, p: Production) -> None:
        p[0] = Block(p[1], p[2], tuple(p[4]))

    @grammar("challenge_stmts : challenge_stmts challenge_stmt")
    def p_challenge_stmts(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("challenge_stmts : ")
    def p_challenge_stmts_empty(self, p: Production) -> None:
        p[0] = []

    @grammar(
        "challenge_stmt : USERNAME STRING semi\n| PASSWORD STRING semi"
        "\n| PASSWORD_FILE STRING semi\n| REALM STRING semi\n| ALGORITHM WORD semi"
    )
    def p_challenge_stmt(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    @grammar("challenge_stmt : ALGORITHM WORD WORD semi")
    def p_challenge_stmt_two(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2], p[3]))

    # mailboxes { read { ... } write { ... } }

    @grammar("mailboxes_block : MAILBOXES LBRACE mboxes RBRACE block_end")
    def p_mailboxes_block(self, p: Production) -> None:
        p[0] = Block(p[1], None, tuple(p[3]))

    @grammar("mboxes : mboxes mbox")
    def p_mboxes(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("mboxes : ")
    def p_mboxes_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("mbox : READ LBRACE mstmts RBRACE block_end\n| WRITE LBRACE mstmts RBRACE block_end")
    def p_mbox(self, p: Production) -> None:
        p[0] = Block(p[1], None, tuple(p[3]))

    @grammar("mstmts : mstmts mstmt")
    def p_mstmts(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("mstmts : ")
    def p_mstmts_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("mstmt : PATH STRING semi")
    def p_mstmt_path(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    @grammar("mstmt : MAP_FROM TRANSLATE_MAP name semi\n| MAP_TO TRANSLATE_MAP name semi")
    def p_mstmt_map(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[3],))

    # crs { ... }  relay { ... }  management { ... }  logging { ... }

    @grammar(
        "setting_block : CRS LBRACE crs_stmts RBRACE block_end"
        "\n| RELAY LBRACE relay_stmts RBRACE block_end"
        "\n| MANAGEMENT LBRACE mgmt_stmts RBRACE block_end"
        "\n| LOGGING LBRACE log_stmts RBRACE block_end"
        "\n| METRICS LBRACE metrics_stmts RBRACE block_end"
    )
    def p_setting_block(self, p: Production) -> None:
        p[0] = Block(p[1], None, tuple(p[3]))

    @grammar(
        "crs_stmts : crs_stmts crs_stmt\n"
        "relay_stmts : relay_stmts relay_stmt\n"
        "mgmt_stmts : mgmt_stmts mgmt_stmt\n"
        "log_stmts : log_stmts log_stmt\n"
        "metrics_stmts : metrics_stmts metrics_stmt"
    )
    def p_setting_stmts(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("crs_stmts : \nrelay_stmts : \nmgmt_stmts : \nlog_stmts : \nmetrics_stmts : ")
    def p_setting_stmts_empty(self, p: Production) -> None:
        p[0] = []

    @grammar(
        "crs_stmt : ADDRESS WORD WORD semi\nmgmt_stmt : BIND WORD WORD semi\n"
        "metrics_stmt : BIND WORD WORD semi"
    )
    def p_setting_two(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2], p[3]))

    @grammar(
        "crs_stmt : KEYSTORE STRING semi\n| CA STRING semi\n"
        "relay_stmt : CONTROL STRING semi\n| FAST_PATH WORD semi\n"
        "mgmt_stmt : COOKIE STRING semi\n| SOCKET STRING semi\n"
        "log_stmt : DIR STRING semi\n| CALL_RECORDS STRING semi\n"
        "metrics_stmt : BIND WORD semi"
    )
    def p_setting_one(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))

    @grammar("log_stmt : CALL_RECORDS_SYSLOG TRUE semi\n| CALL_RECORDS_SYSLOG FALSE semi")
    def p_log_syslog(self, p: Production) -> None:
        p[0] = Stmt(p[1], (p[2],))
