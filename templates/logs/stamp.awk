# A container's output, line by line as it comes, appended to two files: `raw` as written (what `vmctl
# logs` shows, and what every other reader of the log reads) and `stamped`, each line after the UTC time
# it arrived, to the second (what `vmctl logs -t` shows). Run by busybox awk: the guest's supervise.sh
# pipes `crun run` into it, vmctl/host_container.py a host container's stdout and stderr. A line that
# never ends (no newline before the container exits) is written when the output closes.
{
    print >> raw
    fflush(raw)
    print strftime("%Y-%m-%dT%H:%M:%SZ", systime(), 1) " " $0 >> stamped
    fflush(stamped)
}
