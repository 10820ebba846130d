"""MLPerf Tiny reference architectures, built in code with random init (never downloads weights).

Structures follow the MLCommons Tiny v1.0 training code
(https://github.com/mlcommons/tiny/tree/master/benchmark/training): ResNet-8
(image classification, ``resnet_v1_eembc``), DS-CNN (keyword spotting) and
MobileNetV1 0.25 (visual wake words). As there (under tf.keras 2), depthwise
convolutions keep the default initializer and no weight decay.
"""


def _keras(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras, keras.layers, keras.regularizers.l2(1e-4)


def resnet8(input_shape=(32, 32, 3), classes=10, seed=0):
    """ResNet-8 for CIFAR-10 (about 78k parameters)."""
    keras, layers, l2 = _keras(seed)

    def conv(x, filters, kernel, strides, name):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name,
                             kernel_initializer="he_normal", kernel_regularizer=l2)(x)

    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 16, 3, 1, "conv0")
    x = layers.BatchNormalization(name="bn0")(x)
    x = layers.Activation("relu", name="relu0")(x)
    for i, (filters, strides) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        y = conv(x, filters, 3, strides, f"stack{i}_conv1")
        y = layers.BatchNormalization(name=f"stack{i}_bn1")(y)
        y = layers.Activation("relu", name=f"stack{i}_relu1")(y)
        y = conv(y, filters, 3, 1, f"stack{i}_conv2")
        y = layers.BatchNormalization(name=f"stack{i}_bn2")(y)
        if strides != 1:  # 1x1 projection shortcut when the shape changes
            x = conv(x, filters, 1, strides, f"stack{i}_shortcut")
        x = layers.Add(name=f"stack{i}_add")([x, y])
        x = layers.Activation("relu", name=f"stack{i}_relu2")(x)
    x = layers.AveragePooling2D(min(x.shape[1:3]), name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer="he_normal", name="probs")(x)
    return keras.Model(inputs, outputs, name="resnet8")


def ds_cnn(input_shape=(49, 10, 1), classes=12, seed=0):
    """DS-CNN for keyword spotting on 49x10 MFCC features (about 25k parameters)."""
    keras, layers, l2 = _keras(seed)

    inputs = keras.Input(input_shape, name="mfcc")
    x = layers.Conv2D(64, (10, 4), strides=2, padding="same", kernel_regularizer=l2, name="conv0")(inputs)
    x = layers.BatchNormalization(name="bn0")(x)
    x = layers.Activation("relu", name="relu0")(x)
    x = layers.Dropout(0.2, name="dropout0")(x)
    for i in range(1, 5):
        x = layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.Activation("relu", name=f"dw{i}_relu")(x)
        x = layers.Conv2D(64, 1, padding="same", kernel_regularizer=l2, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.Activation("relu", name=f"pw{i}_relu")(x)
    x = layers.Dropout(0.4, name="dropout1")(x)
    # As in MLPerf Tiny: pool (H//2, W//2), which covers the whole (ceil(H/2), ceil(W/2)) map.
    x = layers.AveragePooling2D((input_shape[0] // 2, input_shape[1] // 2), name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def mobilenet_v1_025(input_shape=(96, 96, 3), classes=2, seed=0):
    """MobileNetV1, width 0.25, for visual wake words (about 220k parameters)."""
    keras, layers, l2 = _keras(seed)
    init = {"padding": "same", "kernel_initializer": "he_normal", "kernel_regularizer": l2}

    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, strides=2, name="conv0", **init)(inputs)
    x = layers.BatchNormalization(name="bn0")(x)
    x = layers.Activation("relu", name="relu0")(x)
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]
    for i, (filters, strides) in enumerate(blocks, start=1):
        x = layers.DepthwiseConv2D(3, strides=strides, padding="same", name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.Activation("relu", name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, 1, name=f"pw{i}", **init)(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.Activation("relu", name=f"pw{i}_relu")(x)
    x = layers.AveragePooling2D(tuple(x.shape[1:3]), name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v1_025")


# Epochs of ``train`` per model: each reaches >= 0.9 test accuracy on ``digits_as_images``.
# Test accuracy lags train accuracy by several epochs while the BatchNorm moving statistics
# (momentum 0.99, 44 steps an epoch) catch up; the cosine decay gives a stable end point.
TRAINING_EPOCHS = {"resnet8": 15, "ds-cnn": 24, "mobilenet-v1-0.25": 20}
LEARNING_RATE = 3e-3
BATCH_SIZE = 32


def train(builder, epochs, seed=0):
    """Train ``builder(seed=seed)`` deterministically on the bundled digits, shaped for its input.

    Adam (learning rate ``LEARNING_RATE`` with cosine decay to 0), batch ``BATCH_SIZE``.
    Returns ``(model, data, test_accuracy)``, ``data`` from ``datasets.digits_as_images``.
    """
    import keras
    import tensorflow as tf

    from .datasets import digits_as_images

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = builder(seed=seed)
    data = digits_as_images(model.input_shape[1:], model.output_shape[-1], seed)
    steps = epochs * -(-len(data["y_train"]) // BATCH_SIZE)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data["x_train"], data["y_train"], batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(data["x_test"], data["y_test"], batch_size=256, verbose=0)
    return model, data, float(accuracy)
