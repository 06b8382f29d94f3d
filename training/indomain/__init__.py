"""The v2 default text models, trained in the customer-service domain: three-class
sentiment (zh + en, calibrated), emotion (neutral / angry / anxious / sad / happy) and
intent (the Bitext intents + ``none``, Chinese from JDDC's customer intents).

    python -m yujing.training.indomain.train --out model_repo     # rebuild (about 6 min)
    NUMBA_NUM_THREADS=1 python -m yujing.training.indomain.measure --new model_repo

``data`` holds the loaders, the splits by dialogue and the label mappings;
``INTENT_MAPPING.md`` the JDDC action -> intent table; ``plain_questions.txt`` and
``mixed_zh_en.tsv`` are hand-written evaluation sets (never trained or tuned on).
"""
