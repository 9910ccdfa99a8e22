"""Tools built on the vm_memory library: the ``vm-memory`` command, its demo (a KVM vCPU or
a second process driving a split ring), the KVM harness, the real-mode guest programs and
the RAM-file inspector.

The library never imports this package; it imports the library.
"""
