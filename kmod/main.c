// SPDX-License-Identifier: GPL-2.0
/*
 * cnlab.ko: CBUS (per-CPU deferred connector sends) and the lab control
 * and generator module. See docs/kmod.md.
 *
 * Init order: CBUS, generators, bench, control callback (last, so no
 * request arrives before everything it can reach exists). Exit is the
 * exact reverse.
 */
#include <linux/debugfs.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "cnlab_int.h"

int cnlab_fail_init;
module_param_named(fail_init, cnlab_fail_init, int, 0444);
MODULE_PARM_DESC(fail_init,
		 "Test only: make init step N fail after it succeeded (0 = off)");

/*
 * Returns an error if the fail_init module parameter names this step, so
 * that every error path of init can be exercised from the lab.
 */
int cnlab_init_fault(int step)
{
	if (cnlab_fail_init == step) {
		pr_info(CNLAB_NAME ": fail_init: failing init step %d\n", step);
		return -ECANCELED;
	}
	return 0;
}

static struct dentry *cnlab_dbg;

static int __init cnlab_init(void)
{
	int err;

	/* debugfs is optional: its helpers accept an error pointer. */
	cnlab_dbg = debugfs_create_dir(CNLAB_NAME, NULL);

	err = cnlab_cbus_init(cnlab_dbg);
	if (err)
		goto err_dbg;

	err = cnlab_gen_init();
	if (err)
		goto err_cbus;

	err = cnlab_bench_init();
	if (err)
		goto err_gen;

	err = cnlab_ctl_init();
	if (err)
		goto err_bench;

	pr_info(CNLAB_NAME ": loaded, control id %u:%u\n",
		CNLAB_CTL_IDX, CNLAB_CTL_VAL);
	return 0;

err_bench:
	cnlab_bench_exit();
err_gen:
	cnlab_gen_exit();
err_cbus:
	cnlab_cbus_exit();
err_dbg:
	debugfs_remove_recursive(cnlab_dbg);
	pr_info(CNLAB_NAME ": init failed: %d\n", err);
	return err;
}

static void __exit cnlab_exit(void)
{
	cnlab_ctl_exit();
	cnlab_bench_exit();
	cnlab_gen_exit();
	cnlab_cbus_exit();
	debugfs_remove_recursive(cnlab_dbg);
	pr_info(CNLAB_NAME ": unloaded\n");
}

module_init(cnlab_init);
module_exit(cnlab_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("cnlab: CBUS deferred connector bus and connector lab generators");
MODULE_AUTHOR("cnlab project");
