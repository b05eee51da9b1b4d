"""A vhdnbd serving a configuration file on a Unix socket, driven by SIGHUP:
what the reload tests share (test-reload.sh, test-reload-locks.sh)."""
import json
import os
import signal
import subprocess
import sys
import time

import nbd


class ReloadServer:
    def __init__(self, sock, conf, log, pid):
        self.sock, self.conf, self.log, self.pid = sock, conf, log, pid

    def connect(self, name):
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(self.sock)
        return h

    def wait_log(self, text, after=0, limit=60):
        """Waits (bounded) for text in the server's log past offset after."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            with open(self.log) as f:
                f.seek(after)
                if text in f.read():
                    return
            time.sleep(0.1)
        sys.exit("not in the log within %d s: %s\n%s" % (limit, text, open(self.log).read()))

    def reload(self, text):
        """Replaces the file with text and sends SIGHUP; returns the log
        offset from which the reload's lines follow."""
        with open(self.conf + ".new", "w") as f:
            f.write(text)
        os.rename(self.conf + ".new", self.conf)
        at = os.path.getsize(self.log)
        os.kill(self.pid, signal.SIGHUP)
        return at

    def listed(self):
        """The exports nbdinfo --list finds: name -> description."""
        out = subprocess.run(["nbdinfo", "--list", "--json", "nbd+unix:///?socket=" + self.sock],
                             capture_output=True, text=True, check=True).stdout
        return {e["export-name"]: e.get("description") for e in json.loads(out)["exports"]}

    def refused(self, name):
        try:
            self.connect(name).shutdown()
        except nbd.Error:
            return True
        return False
