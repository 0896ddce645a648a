"""Evidence on real images: DDIM vs DDIM-GMM (and RFIM vs RFIM-GMM) with trained diffusers UNets on MNIST-5k.

``make evidence`` (``gmm-triton evidence run``) trains an ε-prediction and a rectified-flow ``UNet2DModel`` on
4000 real digits (:mod:`.data`, :mod:`.train`), a CNN classifier on the same digits (:mod:`.classifier`), samples
the grid of :mod:`.sweep` with the package's schedulers and scores every cell against the 1000 held-out digits in
the classifier's features (:mod:`.metrics`); :mod:`.report` turns the CSV into the README table, the verdicts, the
plot and the sample grids. ``--quick`` runs the same pipeline on a tiny UNet in seconds (the tests).

Budget (measured on the 2-core development machine, one torch thread, with other users' load; CPU seconds from
``time.process_time`` / ``resource.getrusage``, which other load inflates less than wall time):

    the UNet (train.UNET, 687 k parameters, 28×28)   0.37 CPU s per training iteration (batch 64)
                                                      2.4 CPU ms per image per forward (batch 250)
    (for comparison: (32, 64, 64) channels, 1.06 M parameters: 0.69 CPU s per iteration, 5.2 ms per image)
    training, 2 models × 4000 iterations             ≈ 2 × 1480 = 2960 CPU s
    sampling: per sample and seed 440 network forwards (DDIM 2 η × (5 + 10 + 20) = 70, ORTHO-VUB 4 s × 70 = 280,
              RAND / ORTHO / VUB* 3 × 10 = 30, RFIM and RFIM-GMM 2 × 2 η × (5 + 10) = 60)
              × n = 1000 × 3 seeds = 1.32 M forwards  ≈ 3170 CPU s
    classifier (12 epochs)                           ≈ 50 CPU s;  scoring 123 cells, loading: ≈ 150 CPU s
    total                                            ≈ 6300 CPU s: 44 % of the 14400 CPU s that 2 cores give in
                                                       2 hours, ≈ 55 min on 2 quiet cores (2 workers, one thread each)

The run's own wall and CPU seconds are recorded in ``evidence.json`` and printed in the README section.
"""
