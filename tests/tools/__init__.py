"""Tests of the tools built on the library (`vm_memory_tools`)."""
