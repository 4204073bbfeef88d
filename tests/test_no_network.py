"""The suite runs offline by construction (tests/conftest.py): a connection off this machine fails."""
import socket

import pytest


def test_a_connection_off_this_machine_is_refused():
    with pytest.raises(ConnectionRefusedError, match="may not reach the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=2)
