"""Training and evaluation of the text models (the ``train`` extra): data sets from
``../shared/data``, fitting, calibration, evaluation, the ``yujing models train|eval``
commands. Serving never imports this package; it imports the serving runtime
(``yujing.service.models``) to write artifacts the service can load.
"""
