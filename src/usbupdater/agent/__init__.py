"""The automation around the updater core: `usbupdater watch`.

    watcher  pyudev monitor thread (queues only), coldplug, debouncer
    filter   which block devices are update sticks (pure, from udev properties)
    media    private read-only mounts, finding the one bundle on a stick
    backend  the updater core as a subprocess: install / run / current, progress records
    dialect  each core's exit codes as normalised actions (pure)
    policy   the job's states and every transition between them (pure)
    jobs     the worker's state machine for one stick, and resuming the marker's job
    journal  the in-flight marker and the handled bundles, durable
    status   status.json, notify hook, console line, systemd STATUS (locked: two writers)
    report   the report written back to the stick
    service  the dispatcher: udev events, debounce, the queue, one worker thread at a time

The agent knows the core only through its command line and exit codes (spec section 4), so it
can drive Foundries' `aklite-offline` as well as our own `usbupdater`.
"""
