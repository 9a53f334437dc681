"""Drives crmgate with the official RetailCRM Python client, unchanged.

Usage: python_retailcrm.py BASE_URL CLIENT_KEY
Exits non-zero, with a message, on the first unexpected answer.
"""
import sys

import retailcrm

base, key = sys.argv[1], sys.argv[2]
client = retailcrm.v5(base, key)


def check(what, response, status):
    if response.get_status_code() != status:
        sys.exit(f"{what}: expected {status}, got {response.get_status_code()}: {response.get_response()}")


r = client.orders({"numbers": ["21A"]}, limit=20, page=2)
check("orders", r, 200)
assert r.get_response()["pagination"]["currentPage"] == 2, r.get_response()
external_id = "py-" + base.rstrip("/").rsplit("/", 1)[-1].replace(":", "-")
r = client.order_create({"externalId": external_id, "firstName": "Ann"}, site="main")
check("order_create", r, 201)
r = client.order_create({"externalId": external_id, "firstName": "Ann"}, site="main")
check("duplicate order_create", r, 400)
assert r.get_response()["success"] is False, r.get_response()
r = retailcrm.v5(base, "wrong-key").orders()
check("wrong key", r, 403)
assert r.get_response()["errorMsg"] == 'Wrong "apiKey" value.', r.get_response()
print("ok")
