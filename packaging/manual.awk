# Turns a page of argument-parser's generate-manual into what man and lintian expect: blank lines of the help text
# become paragraph breaks (.Pp), indented lines (examples, output lines) become literal displays, and a subcommand's
# name in NAME is hyphenated (udpecho-server, as git-commit), so that whatis and apropos find it, while the
# synopsis keeps the command as typed (udpecho server).
# usage: awk -v command="udpecho server" -f manual.awk PAGE
BEGIN { literal = 0; named = 0; hyphenated = command; gsub(/ /, "-", hyphenated) }
function close_literal(then_text) {
    if (literal) { print ".Ed"; literal = 0; if (then_text) print ".Pp" }
}
/^\.Dt / { close_literal(); $2 = toupper(hyphenated); print; next }
/^\.Nm / && !named { close_literal(); print ".Nm " hyphenated; named = 1; next }
/^\.Nm$/ { close_literal(); print ".Nm \"" command "\""; next }
/^$/ { close_literal(); print ".Pp"; next }
/^  / {
    if (!literal) { print ".Bd -literal -offset indent"; literal = 1 }
    sub(/^  /, "")
    if ($0 ~ /^[.']/) $0 = "\\&" $0
    print
    next
}
{ close_literal(1); print }
END { close_literal() }
