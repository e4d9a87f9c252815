"""Crawl the IMDS with cloud-init's own datasources, as a booting guest does.

Usage: cloud_init_crawl.py nocloud|openstack|ec2|ec2-aws [max-wait-seconds [smbios-serial]]

Runs the real cloud-init code (Debian's package, on PYTHONPATH) against
http://169.254.169.254 and prints what the datasource found as JSON:
{"instance_id", "hostname", "userdata_b64", "vendordata_b64", "dsmode",
"public_keys"} (public_keys: what cloud-init would install, get_public_ssh_keys()). Only
the probes that inspect the host (DMI, kernel command line, block devices) are
replaced, by what a KubeVirt guest configured as documented would report:
  nocloud    the SMBIOS serial given (the project's seed serial), whose
             dsmode decides whether cloud-init's network stage uses it
  openstack  DMI product name saying OpenStack (detect_openstack() true)
  ec2        no AWS DMI: cloud-init reads without an IMDSv2 session
  ec2-aws    AWS DMI: cloud-init asks for an IMDSv2 session token first
"""

import base64
import json
import logging
import sys
import tempfile

from cloudinit import dmi, helpers, util
from cloudinit.distros import debian
from cloudinit.sources import DataSourceEc2, DataSourceNoCloud, DataSourceOpenStack

IMDS = "http://169.254.169.254"
SERIAL = ""


def fake_dmi(key):
    return SERIAL if key == "system-serial-number" else None


def b64(data):
    if data is None:
        return None
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def main(flavour, max_wait):
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    dmi.read_dmi_data = fake_dmi
    util.get_cmdline = lambda: ""
    util.find_devs_with = lambda *a, **k: []
    tmp = tempfile.mkdtemp()
    paths = helpers.Paths({"cloud_dir": tmp + "/cloud", "run_dir": tmp + "/run"})
    distro = debian.Distro("debian", {}, paths)
    waits = {"metadata_urls": [IMDS], "max_wait": max_wait, "timeout": 10}
    sys_cfg = {
        # As in Debian's /etc/cloud/cloud.cfg.
        "datasource_list": ["NoCloud", "ConfigDrive", "OpenStack", "Ec2", "None"],
        "datasource": {"Ec2": dict(waits), "OpenStack": dict(waits)},
    }
    if flavour == "nocloud":
        ds = DataSourceNoCloud.DataSourceNoCloudNet(sys_cfg, distro, paths)
    elif flavour == "openstack":
        DataSourceOpenStack.detect_openstack = lambda accept_oracle=False: True
        ds = DataSourceOpenStack.DataSourceOpenStack(sys_cfg, distro, paths)
    elif flavour in ("ec2", "ec2-aws"):
        platform = DataSourceEc2.CloudNames.AWS if flavour == "ec2-aws" else DataSourceEc2.CloudNames.UNKNOWN
        DataSourceEc2.identify_platform = lambda: platform
        ds = DataSourceEc2.DataSourceEc2(sys_cfg, distro, paths)
    else:
        raise SystemExit("unknown flavour " + flavour)
    if not ds._get_data():
        print(json.dumps({"found": False}))
        return 1
    md = ds.metadata or {}
    print(json.dumps({
        "found": True,
        "instance_id": md.get("instance-id"),
        "hostname": md.get("local-hostname"),
        "userdata_b64": b64(ds.userdata_raw),
        "vendordata_b64": b64(getattr(ds, "vendordata_raw", None)),
        "api_token_used": bool(getattr(ds, "_api_token", None)),
        "dsmode": ds.dsmode,
        "public_keys": sorted(ds.get_public_ssh_keys()),
    }))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 3:
        SERIAL = sys.argv[3]
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30))
