/*
 * deit.h - the data structures of deit.c, with the shape of every tensor.
 *
 * deit.c is the whole program; this header only names what it is made of, so that a
 * reader (and test_deit.c) can see the model's layout in one place. Shapes use
 *   B batch, T tokens (1 class, 1 distillation if dist_token, N patches), D dim, L depth,
 *   NH heads, H mlp_hidden, C classes, K = in_chans * P * P (a flattened patch).
 */
#ifndef DEIT_H
#define DEIT_H

#include <stddef.h>
#include <stdint.h>

/* ---- file formats: 256 little-endian int32 header, then float32 tensors ---- */
#define HEADER_INTS 256
#define DEIT_MAGIC 20201223    /* student checkpoint: the day DeiT appeared */
#define DEIT_VERSION 1
#define TEACHER_MAGIC 20151210 /* teacher checkpoint: the day ResNet appeared */
#define TEACHER_VERSION 1         /* a ResNet; version 2 adds the architecture at header[15] */
#define TEACHER_VERSION_ARCH 2
#define STATE_MAGIC 20170608   /* training state (optimizer, step, rng): "Attention is all you need" */
#define STATE_VERSION 1

/* ---- random numbers: xorshift64*, small state so it can be saved with the run ---- */
typedef struct {
    uint64_t state;
} Rng;

/* ---- the student: a vision transformer with class and distillation tokens ---- */
typedef struct {
    int img_size;    /* S: input images are S x S */
    int patch_size;  /* P: patches are P x P, N = (S/P)^2 of them */
    int in_chans;    /* 3 */
    int num_classes; /* C */
    int dim;         /* D: token width */
    int depth;       /* L: number of transformer blocks */
    int heads;       /* NH: attention heads, head_dim = D / NH */
    int mlp_hidden;  /* H: hidden width of the MLP, 4 D */
    int dist_token;  /* 1: DeiT with distillation token and head_dist; 0: plain ViT */
} DeiTConfig;

/* Parameters in checkpoint order. Linear weights are (out, in) as in PyTorch. When the model
   has no distillation token, dist_token, head_dist_w and head_dist_b have size 0. */
#define NUM_PARAM_TENSORS 23
typedef struct {
    float *patch_w;     /* (D, K)    patch embedding, a linear map of each flattened patch */
    float *patch_b;     /* (D) */
    float *cls_token;   /* (D)       the class token */
    float *dist_token;  /* (D)       the distillation token (DeiT's addition) */
    float *pos_embed;   /* (T, D)    learned position embedding, [cls, dist, patches] */
    float *ln1_w;       /* (L, D)    LayerNorm before attention */
    float *ln1_b;       /* (L, D) */
    float *qkv_w;       /* (L, 3D, D) rows: q, then k, then v; each split into NH heads */
    float *qkv_b;       /* (L, 3D) */
    float *proj_w;      /* (L, D, D) attention output projection */
    float *proj_b;      /* (L, D) */
    float *ln2_w;       /* (L, D)    LayerNorm before the MLP */
    float *ln2_b;       /* (L, D) */
    float *fc1_w;       /* (L, H, D) */
    float *fc1_b;       /* (L, H) */
    float *fc2_w;       /* (L, D, H) */
    float *fc2_b;       /* (L, D) */
    float *lnf_w;       /* (D)       final LayerNorm */
    float *lnf_b;       /* (D) */
    float *head_w;      /* (C, D)    classifier on the class token */
    float *head_b;      /* (C) */
    float *head_dist_w; /* (C, D)    classifier on the distillation token */
    float *head_dist_b; /* (C) */
} ParameterTensors;

/* Everything the forward pass keeps for the backward pass (per-layer tensors stacked on L).
   The same struct type holds the gradients of the activations (DeiT.grads_acts); the tensors
   marked [no grad] receive none, and their pointer there is NULL. There the per-layer tensors
   hold one block (the backward pass needs a block's gradients only while it is in that block),
   and resid2 two: (2, B, T, D), the block's incoming gradient and the one it passes down.
   The last block (l = L - 1) computes the heads' R = 1 + dist_token tokens only from its
   attention output on (deit_tokens_out in deit.c): there att has R rows of T per image and
   head, atty ... resid2 (and lnf) are (B, R, ...) at the start of the block's (B, T, ...) slot. */
#define NUM_ACTIVATION_TENSORS 27
typedef struct {
    float *patches;     /* (B, N, K)      the image cut into flattened patches [no grad] */
    float *patch_emb;   /* (B, N, D)      patch embeddings */
    float *x0;          /* (B, T, D)      tokens + position embedding: input of block 0 */
    float *ln1;         /* (L, B, T, D) */
    float *ln1_mean;    /* (L, B, T) [no grad] */
    float *ln1_rstd;    /* (L, B, T)      1 / sqrt(var + eps) [no grad] */
    float *qkv;         /* (L, B, T, 3D) */
    float *att;         /* (L, B, NH, T, T) attention probabilities (softmax of the scores) [no grad] */
    float *atty;        /* (L, B, T, D)   attention output, heads concatenated */
    float *attproj;     /* (L, B, T, D)   after the output projection */
    float *resid1;      /* (L, B, T, D)   x + drop_path(attn(ln1(x))) */
    float *ln2;         /* (L, B, T, D) */
    float *ln2_mean;    /* (L, B, T) [no grad] */
    float *ln2_rstd;    /* (L, B, T) [no grad] */
    float *fc1;         /* (L, B, T, H)   MLP pre-activation */
    float *gelu;        /* (L, B, T, H) */
    float *fc2;         /* (L, B, T, D) */
    float *resid2;      /* (L, B, T, D)   block output */
    float *drop_scale;  /* (L, 2, B)      stochastic depth: 0 (dropped) or 1/keep, per sample [no grad] */
    float *lnf;         /* (B, T, D) */
    float *lnf_mean;    /* (B, T) [no grad] */
    float *lnf_rstd;    /* (B, T) [no grad] */
    float *cls_out;     /* (B, D)         final class token */
    float *dist_out;    /* (B, D)         final distillation token */
    float *logits;      /* (B, C)         head(cls_out) */
    float *logits_dist; /* (B, C)         head_dist(dist_out) */
    float *logits_mean; /* (B, C)         inference output: mean of the two heads [no grad] */
} ActivationTensors;

/* One parameter tensor as the optimizer and the checkpoint see it. */
typedef struct {
    const char *name;
    size_t offset;  /* in floats, from the start of the parameter block */
    size_t size;    /* in floats */
    int decay;      /* weight decay applies (DeiT: the matrices only; airbench: see airbench_build) */
    int trainable;  /* 0 for BatchNorm running statistics and frozen tensors */
    float lr_mult;  /* this tensor's learning rate is lr * lr_mult (1, or 64 for airbench's BatchNorm biases) */
} TensorInfo;

typedef struct {
    DeiTConfig config;
    int num_patches;  /* N */
    int num_tokens;   /* T = 1 + dist_token + N */
    float drop_path;  /* stochastic depth rate of the last block (training only) */
    /* parameters and their gradients: one allocation each */
    ParameterTensors params;
    ParameterTensors grads;
    TensorInfo tensors[NUM_PARAM_TENSORS];
    float *params_memory;
    float *grads_memory;
    size_t num_params;
    /* activations and their gradients, allocated at the first forward for batch_size */
    ActivationTensors acts;
    ActivationTensors grads_acts;
    size_t act_sizes[NUM_ACTIVATION_TENSORS]; /* floats of each activation tensor (for the debugger: p m->act_sizes) */
    float *acts_memory;
    float *grads_acts_memory;
    size_t num_acts;        /* floats in acts_memory */
    size_t num_grads_acts;  /* floats in grads_acts_memory: only the tensors that receive a gradient */
    int batch_size;  /* largest B the activations hold */
    Rng rng;         /* drop-path masks */
} DeiT;

/* ---- the teacher: a CIFAR ResNet (He et al. 2016), or airbench (Jordan 2024) ---- */
#define TEACHER_MAX_STAGES 8
typedef enum { ARCH_RESNET = 0, ARCH_AIRBENCH = 1 } TeacherArch;
typedef struct {
    int arch;                         /* ARCH_RESNET or ARCH_AIRBENCH */
    int img_size, in_chans, num_classes;
    int stages;                       /* number of stages (S in the checkpoint format) */
    int blocks;                       /* basic blocks per stage (B in the checkpoint format) */
    int widths[TEACHER_MAX_STAGES];   /* channels of each stage */
} TeacherConfig;

/* A convolution without bias followed by BatchNorm. Parameters point into the teacher's one
   parameter block, activations into its one activation block. Activations are channel-major:
   (channels, B, height, width), so each channel's B*h*w numbers are contiguous, which makes
   the convolution one matmul and BatchNorm one loop per channel. */
typedef struct {
    int cin, cout, ksize, stride, pad;
    int hin, win, hout, wout;           /* spatial sizes, fixed by the architecture */
    float *w;                           /* (cout, cin, k, k) */
    float *gamma, *beta;                /* (cout) */
    float *running_mean, *running_var;  /* (cout) running statistics, used in eval mode */
    float *dw, *dgamma, *dbeta;         /* their gradients */
    float *conv;                        /* (cout, B, hout, wout) convolution output */
    float *out;                         /* (cout, B, hout, wout) BatchNorm output, with what follows it done
                                           as it is written: ResNet: ReLU (stem, conv1), + the shortcut and
                                           ReLU (conv2: the block's output), nothing (shortcut); airbench:
                                           nothing (a GELU follows, in its own buffer), but the whitening
                                           conv, which has no BatchNorm, keeps GELU(conv + bias) here */
    float *bn_mean, *bn_rstd;           /* (cout) batch statistics of the last training forward */
    float bn_eps, bn_momentum;          /* 1e-5 and 0.1 (ResNet), 1e-12 and 0.4 (airbench) */
    float *dout;                        /* gradient of out; where a ReLU was fused into out (ResNet: stem,
                                           conv1, conv2), taken back through it in place (relu_backward)
                                           before it flows into BatchNorm */
    float *padded_in;                   /* the convolution's input in the padded layout of Part II's trick
                                           6, chunk after chunk, as the training forward made it, kept for
                                           the backward (allocated for the convs that take trick 6) */
    int padded_in_kept;                 /* 1 when the last forward was a training one that filled it */
} ConvBN;

/* relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = 1x1 conv + BN or identity */
typedef struct {
    ConvBN conv1, conv2, shortcut;
    int has_shortcut;
} BasicBlock;

/* One stage of airbench: conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU. conv1's
   BatchNorm (gamma, beta, statistics, out, dout) works on the pooled output. */
typedef struct {
    ConvBN conv1, conv2;
    int hp, wp;                         /* size after the pool: floor(hout / 2) */
    float *pooled, *dpooled;            /* (cout, B, hp, wp) max-pool of conv1.conv, and its gradient */
    int32_t *pool_from;                 /* (cout, B, hp, wp) the index in conv1.conv each max came from */
    float *act1, *dact1;                /* (cout, B, hp, wp) GELU(conv1.out): the input of conv2 */
    float *act2, *dact2;                /* (cout, B, hp, wp) GELU(conv2.out): the stage's output */
} AirStage;

typedef struct {
    TeacherConfig config;
    /* airbench (config.arch == ARCH_AIRBENCH) */
    ConvBN whiten;                      /* 2x2 conv with bias, fixed weights; its BN fields are unused;
                                           whiten.out = GELU(whiten.conv), whiten.dout its gradient */
    float *whiten_b, *dwhiten_b;        /* (24) */
    AirStage air[3];
    float *head_pooled, *dhead_pooled;  /* (B, W_last) max over the last stage's 3x3 pixels */
    int32_t *head_from;                 /* (B, W_last) which of them */
    /* ResNet (config.arch == ARCH_RESNET) */
    ConvBN stem;                        /* 3x3 conv + BN + ReLU */
    BasicBlock *blocks;                 /* stages * blocks of them, in order */
    int num_blocks;
    float *fc_w, *fc_b;                 /* (C, W_last), (C); airbench's fc has no bias (fc_b NULL) */
    float *dfc_w, *dfc_b;
    float *input;                       /* (in_chans, B, S, S): the images, channel-major */
    float *pooled, *dpooled;            /* (B, W_last) global average pool */
    float *logits, *dlogits;            /* (B, C) */
    float *col, *dcol, *dconv;          /* scratch: im2col of one chunk of images (conv_chunk) per lane, its gradient, dL/d(conv out) */
    float *w_flip;                      /* scratch: a conv's weights flipped for the transposed convolution (conv_backward) */
    float *dw_lanes;                    /* scratch: each lane's partial weight gradient (conv_backward) */
    float *params_memory, *grads_memory;
    size_t num_params;
    TensorInfo *tensors;
    int num_tensors;
    float *acts_memory;
    size_t num_acts;
    int batch_size;
} Teacher;

#endif /* DEIT_H */
