"""The tables' declarations (`<task>/table.py`): which row each row is compared with, the
rows' order and the cells that explain a row, on records built by hand. A wrong reference
compares the wrong runs and every verdict in that table with it."""

import importlib

import pytest


def table(task):
    return importlib.import_module(f"{task}.table")


def run(task, variant, dataset="bird", model="lite0", metrics=None, **args):
    return {"task": task, "variant": variant, "dataset": dataset, "model": model,
            "metrics": metrics or {}, "args": {"image_size": 224, "epochs": 4, **args},
            "data": {}}


def test_table1_compares_pretrained_with_baseline_and_strong_with_the_seed_recipe():
    t = table("task1_2_finetune")
    base, other_model = run("task1_2_finetune", "baseline"), run("task1_2_finetune", "baseline",
                                                                 model="resnet18")
    dog_base = run("task1_2_finetune", "baseline", dataset="dog")
    pre = run("task1_2_finetune", "pretrained")  # no recipe recorded: the seed's
    pre_seed = run("task1_2_finetune", "pretrained", recipe="seed")
    strong = run("task1_2_finetune", "pretrained", recipe="strong")
    rows = [other_model, dog_base, strong, base, pre]
    assert t.reference(base, rows) is None
    assert t.reference(pre, rows) is base and t.reference(pre_seed, rows) is base
    assert t.reference(strong, rows) is pre  # not itself, though it is "pretrained" too
    assert t.reference(strong, [strong, pre_seed]) is pre_seed
    assert t.reference(strong, [strong, base]) is None
    assert t.reference(run("task1_2_finetune", "pretrained", dataset="dog"), rows) is dog_base
    assert t.same_setting(base, pre) and not t.same_setting(base, other_model)
    assert not t.same_setting(base, dog_base)


def crop(variant, localiser="", **args):
    return run("task3_crop", variant, metrics={"localiser": localiser}, **args)


def test_table2_orders_rows_and_compares_each_crop_with_the_whole_photo_trained_alike():
    t = table("task3_crop")
    whole = run("task1_2_finetune", "pretrained")
    whole_strong = run("task1_2_finetune", "pretrained", recipe="strong")
    box_cam = crop("box-cam", "CAM (lite0)", crop="box", recipe="strong")
    box_cam_tta = crop("box-cam-tta", "CAM (lite0)", crop="box", tta="whole", recipe="strong")
    square = crop("square-cam", "CAM (lite0)", crop="square", recipe="strong")
    centre = crop("box-centre", "centre", crop="box", recipe="strong")
    oracle = crop("box-gt", "true boxes", crop="box", recipe="strong")
    detector = crop("box-det", "detector (fasterrcnn)", crop="box", recipe="strong")
    dog = crop("box-cam", "CAM", crop="box", recipe="strong") | {"dataset": "dog"}
    rows = [dog, oracle, square, box_cam_tta, detector, box_cam, centre, whole]
    assert sorted(rows, key=t.order) == [whole, centre, box_cam, box_cam_tta, square,
                                         detector, oracle, dog]
    rows.append(whole_strong)
    assert t.order(crop("x", "someone else's", crop="box"))[2] == -1  # unknown: first
    # the whole photo before any crop row, a crop without TTA before one with it, whatever
    # their names
    unnamed = crop("a", crop="none")
    assert sorted([unnamed, whole], key=t.order) == [whole, unnamed]
    plain, tta = crop("z-plain", "CAM", crop="box"), crop("a-tta", "CAM", crop="box", tta="whole")
    assert sorted([tta, plain], key=t.order) == [plain, tta]
    assert t.reference(box_cam, rows) is whole_strong and t.reference(whole, rows) is None
    assert t.reference(crop("box-cam", "CAM", crop="box"), rows) is whole  # seed recipe
    assert t.reference(crop("box-cam", "CAM", crop="box", image_size=448), rows) is None
    assert t.whole_photo(whole) and not t.whole_photo(run("task1_2_finetune", "baseline"))
    assert not t.whole_photo(box_cam | {"variant": "pretrained"})
    assert t.trained(crop("detector")) and not t.trained(crop("cam"))


def test_table2_cells_name_the_crop_and_show_corloc_only_for_predicted_test_boxes():
    t = table("task3_crop")
    whole = run("task1_2_finetune", "pretrained")
    assert t.crop_cell(whole) == "none (task 1-2)" and not t.cropped(whole)
    assert t.crop_cell(crop("b", crop="box")) == "box"
    assert t.crop_cell(crop("b", crop="box", tta="whole")) == "box + whole photo (TTA)"
    assert t.crop_cell(crop("b", crop="box", tta="none")) == "box"
    assert t.cropped(crop("b", crop="square")) and not t.cropped(crop("b", crop="none"))
    predicted = crop("b", crop="box", test_boxes="pred") | {"metrics": {"detector_corloc": 0.8}}
    assert t.corloc_cell(predicted) == "80.00"
    assert t.corloc_cell(predicted | {"args": {**predicted["args"], "test_boxes": "gt"}}) == "–"
    assert t.corloc_cell(predicted | {"args": {**predicted["args"], "crop": "none"}}) == "–"


def test_table3_compares_the_gan_rows_with_the_real_only_run_trained_alike():
    t = table("task4_dcgan")
    real = run("task1_2_finetune", "pretrained", recipe="strong")
    real_seed = run("task1_2_finetune", "pretrained")
    gan = run("task4_dcgan", "dcgan", recipe="strong")
    rows = [gan, real_seed, real]
    assert t.reference(gan, rows) is real and t.reference(real, rows) is None
    assert t.reference(run("task4_dcgan", "dcgan"), rows) is real_seed
    assert t.reference(gan, [gan, real_seed]) is None
    assert t.real_only(real) and not t.real_only(run("task1_2_finetune", "baseline"))
    assert not t.real_only(gan | {"variant": "pretrained"})
    assert t.gan(gan) and not t.gan(real)


def test_table4_compares_each_model_with_the_first_of_its_dataset():
    t = table("task5_vit")
    vit, cnn = run("task5_vit", "vit"), run("task5_vit", "cnn")
    dog_vit, dog_cnn = (r | {"dataset": "dog"} for r in (run("task5_vit", "vit"),
                                                          run("task5_vit", "cnn")))
    rows = [vit, cnn, dog_vit, dog_cnn]
    assert t.first_of_dataset(vit, rows) is None
    assert t.first_of_dataset(cnn, rows) is vit and t.first_of_dataset(dog_cnn, rows) is dog_vit


def test_table6_compares_with_the_standard_model_on_every_worst_case_budget():
    t = table("task7_fgsm")
    standard = run("task7_fgsm", "standard")
    adv = run("task7_fgsm", "pgd2", adv_eps=2.0, adv_prob=0.5, adv_mode="half",
              select="robust")
    dog = run("task7_fgsm", "standard", dataset="dog")
    assert t.reference(adv, [dog, adv, standard]) is standard
    assert t.reference(standard, [standard]) is None
    assert t.reference(adv | {"dataset": "dog"}, [standard, dog]) is dog
    names = ["robust_top1:worst@16/255", "robust_top1:worst@1/255", "robust_top1:fgsm@1/255",
             "robust_top1:worst@2/255", "clean_top1"]
    rows = [{"predictions": {name: "p.npz" for name in names[:3]}},
            {"predictions": {name: "p.npz" for name in names[3:]}}, {}]
    assert t.compared(rows) == [("clean", "clean_top1"),
                                ("WORST@1/255", "robust_top1:worst@1/255"),
                                ("WORST@2/255", "robust_top1:worst@2/255"),
                                ("WORST@16/255", "robust_top1:worst@16/255")]  # by number


def test_table6_cells_say_how_each_model_was_trained_and_checked():
    t = table("task7_fgsm")
    assert t.training_cell(run("task7_fgsm", "standard")) == "standard"
    adv = run("task7_fgsm", "fgsm-rs", adv_eps=2.0, adv_prob=0.5, adv_mode="half")
    assert t.training_cell(adv) == "fgsm-rs eps 2/255, p 0.5 per half; best epoch by clean val"
    adv["args"]["select"] = "robust"
    adv["metrics"]["overfit_guard"] = {"stopped_at_epoch": 7}
    assert t.training_cell(adv) == ("fgsm-rs eps 2/255, p 0.5 per half; best epoch by robust "
                                    "val; guard stopped it at epoch 7")
    adv["metrics"]["overfit_guard"] = {"stopped_at_epoch": None}
    assert t.training_cell(adv).endswith("by robust val")
    adv["metrics"]["overfit_guard"] = None
    assert t.training_cell(adv).endswith("by robust val")
    assert t.masking_cell(adv) == "–"
    adv["metrics"]["gradient_masking"] = {"passed": True, "failed": []}
    assert t.masking_cell(adv) == "pass"
    adv["metrics"]["gradient_masking"] = {"passed": False, "failed": ["a", "b"]}
    assert t.masking_cell(adv) == "FAIL: a; b"


@pytest.mark.parametrize("fraction", [0.1, 1.0])
def test_table7_compares_each_backbone_with_imagenet_at_the_same_label_budget(fraction):
    t = table("task8_simclr")

    def backbone(variant, share, dataset="bird"):
        return run("task8_simclr", variant, dataset,
                   metrics={"label_fraction": share}) | {"dataset": dataset}

    imagenet = {share: backbone("imagenet", share) for share in (0.1, 1.0)}
    dog = backbone("imagenet", fraction, "dog")
    simclr = backbone("simclr", fraction)
    rows = [dog, *imagenet.values(), simclr]
    assert t.reference(simclr, rows) is imagenet[fraction]
    assert t.reference(imagenet[fraction], rows) is None
    assert t.reference(backbone("random", fraction, "dog"), rows) is dog


def test_table3_and_table7_cells_over_seeds_show_the_mean_and_spread_of_each_seed():
    """The GAN's FID and GAN-test and SimCLR's final kNN monitor have no per-image values:
    over seeds each cell is their mean with the seeds' values (2 seeds), not seed 0's."""
    gan = table("task4_dcgan").TABLES[0]
    cells = dict(gan.columns)
    seeds = [run("task4_dcgan", "dcgan", metrics={
        "fid": fid, "gan_test_top1": top1, "gan_test_real_val_top1": 0.5, "kid": kid,
        "kid_std": 0.0005}) for fid, top1, kid in ((120.0, 0.10, 0.01), (130.0, 0.12, 0.014))]
    group = seeds[0] | {"_seeds": seeds, "metrics": {  # seed_group's means
        "fid": 125.0, "gan_test_top1": 0.11, "gan_test_real_val_top1": 0.5, "kid": 0.012,
        "kid_std": 0.0005}}
    assert cells["FID (lite0)"](group) == "125.0 (seeds 120.0, 130.0)"
    assert cells["KID x 1000 (± sd over subsets)"](group) == "12.0 ± 0.5 (seeds 10.0, 14.0)"
    assert cells["KID x 1000 (± sd over subsets)"](seeds[0]) == "10.0 ± 0.5"
    assert cells["GAN-test: generated / real val at GAN size (%)"](group) == (
        "11.00 (seeds 10.00, 12.00) / 50.00")
    assert cells["FID (lite0)"](seeds[1]) == "130.0" and cells["Val FID"](seeds[1]) == "–"
    simclr = dict(table("task8_simclr").TABLES[0].columns)["Final val kNN (monitor)"]
    runs = [run("task8_simclr", "simclr") | {"pretrain_history": [
        {"val_knn_top1": 0.5}, {"val_knn_top1": knn}]} for knn in (0.0171, 0.0229)]
    assert simclr(runs[0] | {"_seeds": runs}) == "2.00 (seeds 1.71, 2.29)"
    assert simclr(runs[1]) == "2.29" and simclr(run("task8_simclr", "random")) == "–"
