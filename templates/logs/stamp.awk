# A container's output, line by line as it comes, appended to two files: `raw` as written (what `vmctl
# logs` shows, and what every other reader of the log reads) and `stamped`, each line after the UTC time
# it arrived, to the second (what `vmctl logs -t` shows). Run by busybox awk: the guest's supervise.sh
# pipes `crun run` into it, vmctl/host_container.py a host container's stdout and stderr. A line that
# never ends (no newline before the container exits) is written when the output closes.
#
# With `max` (bytes: compose's json-file `max-size`), both are rotated before `raw` would pass it, as
# docker rotates its json-file logs: FILE.1 becomes FILE.2 and so on, FILE becomes FILE.1, and a new FILE
# starts, `keep` files in all (`max-file`; 1: FILE starts again, empty). Sizes are counted in characters,
# and a line is never split: a file holds about `max`.
BEGIN {
    if (max > 0) {  # a restarted container appends: count what its log already holds
        while ((getline line < raw) > 0)
            size += length(line) + 1
        close(raw)
    }
}
{
    if (max > 0 && size > 0 && size + length($0) + 1 > max)
        rotate()
    print >> raw
    fflush(raw)
    size += length($0) + 1
    print strftime("%Y-%m-%dT%H:%M:%SZ", systime(), 1) " " $0 >> stamped
    fflush(stamped)
}

function rotate(    i) {
    close(raw)
    close(stamped)
    for (i = keep - 1; i >= 1; i--) {
        shift(raw, i)
        shift(stamped, i)
    }
    # the new files as private as the first ones (a log can hold secrets); `:>` also empties them (keep 1)
    system("umask 077; : > " quote(raw) "; : > " quote(stamped))
    size = 0
}

function shift(file, i) {  # FILE.(i-1) (FILE itself for i = 1) becomes FILE.i, where it exists
    system("[ ! -e " quote(file suffix(i - 1)) " ] || mv -f " quote(file suffix(i - 1)) " " quote(file suffix(i)))
}

function suffix(i) {
    return i > 0 ? "." i : ""
}

function quote(text) {  # one shell word, whatever the path holds: '...' with each ' as '\''
    gsub(/'/, "'\\''", text)
    return "'" text "'"
}
