"""Evidence on real images: DDIM vs DDIM-GMM (and RFIM vs RFIM-GMM) with trained diffusers UNets on MNIST-5k.

``make evidence`` (``gmm-triton evidence run``) trains an ε-prediction and a rectified-flow ``UNet2DModel`` on
4000 real digits (:mod:`.data`, :mod:`.train`), a CNN classifier on the same digits (:mod:`.classifier`), samples
the grid of :mod:`.sweep` with the package's schedulers and scores every cell against the 1000 held-out digits in
the classifier's features (:mod:`.metrics`); :mod:`.report` turns the CSV into the README table, the verdicts, the
plot and the sample grids. ``--quick`` runs the same pipeline on a tiny UNet in seconds (the tests).

Budget (measured on the 2-core development machine, one torch thread per process; CPU seconds from
``time.process_time`` / ``resource.getrusage``, which other users' load inflates far less than wall time):

    the UNet (train.UNET, (16, 32, 32) channels, 267 k parameters, 28×28)
                                                      0.26 CPU s per training iteration (batch 64)
                                                      1.7 CPU ms per image per forward (batch 250)
    (larger UNets measured alike: (16, 32, 64) + attention at 7×7, 687 k parameters: 0.37 s, 2.4 ms; (32, 64, 64),
     1.06 M parameters: 0.69 s, 5.2 ms)
    training, 2 models × 3000 iterations             ≈ 2 × 780 = 1560 CPU s
    sampling: per sample and seed 440 network forwards (DDIM 2 η × (5 + 10 + 20) = 70, ORTHO-VUB 4 s × 70 = 280,
              RAND / ORTHO / VUB* 3 × 10 = 30, RFIM and RFIM-GMM 2 × 2 η × (5 + 10) = 60)
              × n = 1000 × 3 seeds = 1.32 M forwards  ≈ 2250 CPU s
    classifier (12 epochs)                           ≈ 50 CPU s;  scoring 123 cells, loading: ≈ 150 CPU s
    total                                            ≈ 4000 CPU s: 28 % of the 14400 CPU s that 2 cores give in
                                                       2 hours, ≈ 35 min on 2 quiet cores (2 workers, one thread each)

The 687 k UNet with 4000 iterations (≈ 6300 CPU s, 44 % of the budget) also fits 2 quiet cores; the smaller one was
chosen because the machine this was built on was shared with six other jobs (load 10–13 on 2 cores), on which the
first run got an eighth of a core per worker. Larger models, more iterations, 50 steps or more scales fit the
2-hour budget on a quiet machine: ``Settings`` in :mod:`.sweep` and ``train.UNET`` are the knobs.

The run's own wall and CPU seconds are recorded in ``evidence.json`` and printed in the README section.
"""
