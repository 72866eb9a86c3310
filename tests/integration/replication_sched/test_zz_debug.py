import asyncio, io
import pytest
from tests.integration.replication_sched.conftest import push_task, snapshot, MIB

@pytest.mark.parametrize("i", range(24))
async def test_dbg(i, server, client, states, held_ssh, pool_pair, local_zfs):
    credentials, hold = held_ssh
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, "auto-2026-03-01_10-00", size=MIB)
    task = await client.call("replication.create", push_task(source, target, transport="SSH", ssh_credentials=credentials))
    hold.freeze()
    run = asyncio.create_task(client.call("replication.run", task["id"], job=True))
    await states.wait_for(task["id"], "RUNNING")
    await asyncio.sleep((i % 8) * 0.01)
    job_id = (await client.call("replication.get_instance", task["id"]))["job"]["id"]
    await client.call("core.job_abort", job_id)
    done, _ = await asyncio.wait([run], timeout=5)
    if not done:
        job = server.app.jobs.get(job_id)
        out = io.StringIO()
        job.task.print_stack(file=out)
        for t in asyncio.all_tasks():
            if "ssh" in repr(t.get_coro()).lower() or "close" in repr(t.get_coro()).lower():
                t.print_stack(file=out)
        print(out.getvalue())
        hold.release()
        await run
        assert False, "stuck"
    hold.release()
