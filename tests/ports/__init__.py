"""The runtime on Debian's ports: the runtime test suite and the plugin's target table,
checked under Debian's own Python on each architecture the plugin names.

`roots` builds a minimal Debian root per architecture (cached outside the repository),
`suite` runs the runtime tests in it (under `qemu-<arch>-static`, natively for i386) and
`facts` compares what that runtime reports with the plugin's row for the target. The
modules run on the host, except `foreign_plugin` and `probe`, which run inside the
foreign interpreter. `python -m tests.ports` prints the per-architecture results.
"""
